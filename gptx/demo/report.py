"""The demo report: one Markdown section per stage under WORKDIR/report/, joined into WORKDIR/report.md, and the
plots the sections show (PNG files beside the sections)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import numpy as np

from gptx.data import image_text
from gptx.train import logs


class Report:
    """Markdown sections of the demo report, one file per stage, joined in the order of `stages`."""

    def __init__(self, workdir: str, stages: Sequence[str]):
        self.workdir = workdir
        self.stages = tuple(stages)
        self.dir = os.path.join(workdir, "report")
        os.makedirs(self.dir, exist_ok=True)

    def section(self, stage: str, markdown: str) -> None:
        with open(os.path.join(self.dir, f"{stage}.md"), "w") as f:
            f.write(markdown.rstrip() + "\n")
        self.write()

    def image_path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self) -> str:
        parts = ["# gptx demo report\n"]
        for stage in self.stages:
            path = os.path.join(self.dir, f"{stage}.md")
            if os.path.exists(path):
                with open(path) as f:
                    parts.append(f.read())
        out = os.path.join(self.workdir, "report.md")
        with open(out, "w") as f:
            f.write("\n".join(parts))
        return out


@contextlib.contextmanager
def figure(path: str, figsize: tuple[float, float], nrows: int = 1, ncols: int = 1) -> Iterator[tuple]:
    """(fig, axes) of a new figure, laid out tight and saved to `path` at 100 dpi when the block ends."""
    import matplotlib  # lazy: only the stages that plot need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def plot_losses(history: list[dict], unigram: float, path: str, title: str) -> None:
    """Train and validation loss of a run against the unigram entropy of the corpus."""
    with figure(path, (7, 4)) as (_, ax):
        train = [(h["step"], h["loss"]) for h in history if "loss" in h]
        val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
        ax.plot(*zip(*train, strict=True), label="train loss")
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
        ax.axhline(unigram, color="gray", ls="--", label=f"unigram entropy ({unigram:.2f})")
        ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
        ax.legend()


def plot_accuracy_vs_shots(per_shot: dict[int, dict], chance: float, path: str, title: str) -> None:
    """Accuracy (and acc_norm) with one-standard-error bars against the mean demonstrations used."""
    with figure(path, (6, 4)) as (_, ax):
        ks = sorted(per_shot)
        x = [per_shot[k]["mean_shots"] for k in ks]
        for metric, style in (("acc", "o-"), ("acc_norm", "s--")):
            if metric in per_shot[ks[0]]:
                y = [per_shot[k][metric] for k in ks]
                err = [per_shot[k][f"{metric}_stderr"] for k in ks]
                ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=metric)
        ax.axhline(chance, color="gray", ls=":", label=f"chance ({chance:.0%})")
        ax.set(xlabel="demonstrations in the context (K)", ylabel="accuracy", title=title)
        ax.legend()


def plot_accuracy_bars(rows: list[tuple[str, float, float]], path: str, title: str) -> None:
    """Bar chart of (label, accuracy, stderr) rows with the 50% chance line."""
    with figure(path, (6, 3.5)) as (_, ax):
        labels, accs, errs = zip(*rows, strict=True)
        ax.bar(labels, accs, yerr=errs, capsize=4, color=["tab:blue", "tab:gray", "tab:orange"])
        ax.axhline(0.5, color="black", ls=":", label="chance (50%)")
        ax.set(ylabel="SST-2 dev accuracy", ylim=(0.0, 1.0), title=title)
        ax.legend(loc="upper right")


PPO_PANELS = {"score": "normalised RM score", "kl": "KL(π || SFT), nats", "response_length": "response tokens"}


def plot_ppo(histories: dict[str, list[dict]], path: str) -> None:
    """RM score, KL to SFT and response length per PPO iteration, one line per run."""
    with figure(path, (12, 3.5), ncols=3) as (_, axes):
        for name, hist in histories.items():
            steps = [h["step"] for h in hist]
            for ax, (key, title) in zip(axes, PPO_PANELS.items(), strict=True):
                ax.plot(steps, [h[key] for h in hist], label=name)
                ax.set(xlabel="PPO iteration", title=title)
        axes[0].legend()


def plot_digits(bank, test_idx, clip_pred, answers, path: str, n: int = 16) -> None:
    """A grid of held-out digits titled with CLIP's zero-shot class and the decoder's zero-shot answer."""
    with figure(path, (n * 0.75, 3.4), nrows=2, ncols=n // 2) as (fig, axes):
        for ax, i, c, a in zip(axes.flat, test_idx[:n], clip_pred[:n], answers[:n], strict=False):
            ax.imshow(bank.digits[i], cmap="gray_r")
            truth = image_text.DIGIT_NAMES[bank.labels[i]]
            title = f"CLIP: {image_text.DIGIT_NAMES[c]}\nLM: {a or '?'}"
            ax.set_title(title, fontsize=7, color="k" if a == truth else "r")
            ax.axis("off")
        fig.suptitle("held-out digits: zero-shot CLIP class / decoder's answer (red: wrong answer)", fontsize=9)


def plot_curves(runs: dict[str, str], path: str) -> None:
    """Train and eval loss of each run directory (metrics.jsonl), one panel per run."""
    with figure(path, (4 * len(runs), 3.2), ncols=len(runs)) as (_, axes):
        for ax, (title, run_dir) in zip(np.atleast_1d(axes), runs.items(), strict=True):
            history = logs.read_metrics(run_dir)
            for key, style in (("loss", "-"), ("eval_loss", "o-")):
                points = [(h["step"], h[key]) for h in history if key in h]
                if points:
                    ax.plot(*zip(*points, strict=True), style, label=key.replace("_", " "))
            ax.set(title=title, xlabel="step", ylabel="loss")
            ax.legend(fontsize=7)
