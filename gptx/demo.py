"""`gptx.main demo`: the GPT series in miniature on the bundled corpus, as a list of named stages.

Each stage writes its own section (Markdown + PNGs) under WORKDIR/report/, and WORKDIR/report.md is rebuilt
from all sections present after every stage, so `--stages=sample` alone still yields a complete report.
Later features add stages to `STAGES`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from gptx.config import ConfigError
from gptx.data import loader, sources, stats
from gptx.train import logs, pretrain

SAMPLE_PROMPTS = ("ROMEO:", "JULIET:\nO Romeo,", "KING HENRY VI:\n", "First Citizen:\nWe")


class Report:
    """Markdown sections of the demo report, one file per stage."""

    def __init__(self, workdir: str):
        self.workdir = workdir
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
        for stage in STAGES:
            path = os.path.join(self.dir, f"{stage}.md")
            if os.path.exists(path):
                with open(path) as f:
                    parts.append(f.read())
        out = os.path.join(self.workdir, "report.md")
        with open(out, "w") as f:
            f.write("\n".join(parts))
        return out


def stage_tokenizer(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """Train a SentencePiece BPE tokenizer on the training split."""
    t0 = time.perf_counter()
    tok = pretrain.train_tokenizer(cfg, workdir)
    docs = sources.read_documents(cfg.data.corpus, cfg.data.doc_separator)
    train_docs, _ = loader.split_train_val(docs, cfg.data.val_fraction)
    n_tokens = sum(len(tok.encode(d)) for d in train_docs)
    n_chars = sum(len(d) for d in train_docs)
    example = train_docs[1]
    pieces = [tok.sp.id_to_piece(i) for i in tok.encode(example)[:24]]
    report.section(
        "tokenizer",
        f"## 1. Tokenizer\n\nSentencePiece {cfg.tokenizer.model_type.upper()} with {tok.vocab_size} pieces, "
        f"trained in {time.perf_counter() - t0:.1f} s on {len(train_docs)} documents ({n_chars:,} characters).\n"
        f"Training split: {n_tokens:,} tokens, {n_chars / n_tokens:.2f} characters per token.\n\n"
        f"First pieces of a document: `{' '.join(repr(p)[1:-1] for p in pieces)}`\n",
    )


def plot_losses(history: list[dict], unigram: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    ax.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.axhline(unigram, color="gray", ls="--", label=f"unigram entropy ({unigram:.2f})")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def stage_prepare(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """GPT-3's data pipeline (normalise, filter, deduplicate, mix, shard) on the demo corpus, with its report."""
    from gptx.data import prepare, summary

    prep = ml_collections.ConfigDict(cfg.to_dict())
    if not prep.data_prep.sources:  # the demo corpus alone: no raw source to classify, no eval files to remove
        corpus = {"name": "corpus", "path": cfg.data.corpus, "separator": cfg.data.doc_separator}
        prep.data_prep.sources = (corpus,)
    prep.data_prep.update(output_dir=os.path.join(workdir, "prepared"), progress=False)
    result = prepare.run(prep, prep.data_prep.output_dir)
    report.section(
        "prepare",
        "## 0. Data preparation (GPT-3 pipeline)\n\n"
        f"`gptx.main prepare` on {', '.join(s['name'] for s in prep.data_prep.sources)} in {result['seconds']:.1f} s: "
        f"{result['shards']['train_docs']:,} training and {result['shards']['val_docs']:,} validation documents "
        f"in ArrayRecord shards under `prepared/` (full report: `prepared/summary.md`, `prepared/report.json`). "
        "The pretraining below reads the corpus itself; `--config.data.corpus=WORKDIR/prepared` trains on the "
        "shards instead.\n\n" + summary.stage_table(result) + "\n" + summary.dedup_section(result),
    )


def stage_pretrain(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """Pretrain a tiny GPT-2 on the corpus; plot its losses against the unigram entropy."""
    t0 = time.perf_counter()
    run_dir = os.path.join(workdir, "pretrain")
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.data.tokenizer = pretrain.tokenizer_path(cfg, workdir)
    if not os.path.exists(cfg.data.tokenizer):
        pretrain.train_tokenizer(cfg, workdir)
    pretrain.run(cfg, run_dir)
    history = logs.read_metrics(run_dir)  # the whole run, also when it resumed
    tok = pretrain.load_tokenizer(cfg, workdir)
    docs = sources.read_documents(cfg.data.corpus, cfg.data.doc_separator)
    train_docs, val_docs = loader.split_train_val(docs, cfg.data.val_fraction)
    unigram = stats.unigram_entropy(train_docs, tok)
    png = report.image_path("pretrain_loss.png")
    plot_losses(history, unigram, png, f"{cfg.model.name}: {cfg.model.n_layer} layers, d={cfg.model.d_model}")
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    speed = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    summary = {
        "steps": cfg.train.steps,
        "final_train_loss": [h["loss"] for h in history if "loss" in h][-1],
        "final_eval_loss": evals[-1] if evals else None,
        "unigram_entropy": unigram,
        "median_tokens_per_s": float(np.median(speed)) if speed else None,
        "wall_s": time.perf_counter() - t0,
    }
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    report.section(
        "pretrain",
        f"## 2. Pretraining (GPT-2 architecture)\n\n"
        f"{cfg.model.n_layer} layers, d_model {cfg.model.d_model}, {cfg.model.n_head} heads, context "
        f"{cfg.model.block_size}, {cfg.train.steps} steps of {cfg.train.batch_size} packed sequences.\n\n"
        f"| | nats/token |\n|---|---|\n| unigram entropy (context-free baseline) | {unigram:.3f} |\n"
        f"| final train loss | {summary['final_train_loss']:.3f} |\n"
        f"| final validation loss | {summary['final_eval_loss']:.3f} |\n\n"
        f"Median throughput {summary['median_tokens_per_s'] or 0:,.0f} tokens/s; stage took "
        f"{summary['wall_s']:.0f} s.\n\n![loss curve](report/pretrain_loss.png)\n",
    )


def stage_sample(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """Print samples from the pretrained model: all prompts in one batch through the KV-cache decoder."""
    from gptx import sample

    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.data.tokenizer = pretrain.tokenizer_path(cfg, workdir)
    model, params, tok = pretrain.load_trained(cfg, os.path.join(workdir, "pretrain"))
    prompts = [[tok.bos_id, *tok.encode(p)] for p in SAMPLE_PROMPTS]
    cfg.sample.max_new_tokens = min(cfg.sample.max_new_tokens, cfg.model.block_size - max(map(len, prompts)))
    sampling = sample.sampling_from_config(cfg.sample, tok.eos_id, tok.pad_id)
    out = sample.generate(model, params, prompts, sampling, tokenizer=tok)
    texts = [p + t for p, t in zip(SAMPLE_PROMPTS, out.texts, strict=True)]
    for text in texts:
        print(f"---\n{text}")
    body = "\n\n".join(f"```\n{t}\n```" for t in texts)
    settings = f"temperature {sampling.temperature}, top-k {sampling.top_k}, top-p {sampling.top_p}"
    report.section("sample", f"## 3. Samples ({settings}, stop at a blank line)\n\n{body}\n")


def stage_fewshot(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """GPT-3 in-context learning: the pretrained model 0/1/K-shot on held-out lines, accuracy vs demonstrations."""
    from gptx.eval import fewshot_demo

    report.section("fewshot", fewshot_demo.run(cfg, workdir, report.image_path("fewshot.png")))


def stage_scaling(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """GPT-4-style predictable scaling: a sweep of small models, the largest predicted before it trains."""
    import shutil

    from gptx import scaling

    sweep_cfg = ml_collections.ConfigDict(cfg.to_dict())
    sweep_cfg.data.tokenizer = pretrain.tokenizer_path(cfg, workdir)  # the demo's tokenizer, shared by all runs
    if not os.path.exists(sweep_cfg.data.tokenizer):
        pretrain.train_tokenizer(cfg, workdir)
    # Short contexts and small batches keep five runs within a few CPU minutes; sizes come from config.scaling.
    sweep_cfg.model.update(name="scaling", block_size=64, dropout=0.0, attn_dropout=0.0)
    sweep_cfg.data.seq_len = 0
    sweep_cfg.train.update(batch_size=16, warmup_steps=20, eval_batches=16, progress=False)
    run_dir = os.path.join(workdir, "scaling")
    results = scaling.sweep(sweep_cfg, run_dir)
    with open(os.path.join(run_dir, scaling.PREDICTION)) as f:
        pred = json.load(f)
    shutil.copy(os.path.join(run_dir, "prediction.png"), report.image_path("scaling_prediction.png"))
    rows = "\n".join(
        f"| {r['name']} | {r['n_params']:,} | {r['compute']:.2e} | {r['loss']:.3f} |"
        for r in sorted(results.values(), key=lambda r: r["compute"])
    )
    lines = []
    for t in pred["targets"]:
        lo, hi = t["interval"]
        measured = "not trained" if t["measured"] is None else f"{t['measured']:.3f}"
        error = f"{100 * t['rel_error']:+.1f}%" if t.get("rel_error") is not None else "n/a"
        lines.append(f"| {t['name']} | {t['predicted']:.3f} [{lo:.3f}, {hi:.3f}] | {measured} | {error} |")
    span = max(r["compute"] for r in results.values()) / min(r["compute"] for r in results.values())
    report.section(
        "scaling",
        f"## 4. Predictable scaling (GPT-4 report)\n\n{len(results)} runs spanning {span:.0f}x in training compute "
        f"(FLOPs counted as for MFU). L(C) = a·C^b + c is fitted on all but the largest run and predicts it "
        f"before it trains ({int(100 * sweep_cfg.scaling.ci)}% bootstrap interval).\n\n"
        f"| run | parameters | compute (FLOPs) | final eval loss |\n|---|---|---|---|\n{rows}\n\n"
        f"| predicted run | prediction [interval] | measured | error |\n|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
        "![scaling prediction](report/scaling_prediction.png)\n",
    )


def stage_vision(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """GPT-4V in miniature: CLIP on digits, then a ViT-fed decoder answering about them (gptx/train/vision_demo.py)."""
    from gptx.train import vision_demo

    vision_demo.stage(cfg, workdir, report)


def stage_rlhf(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """InstructGPT in miniature: SFT, a reward model of VADER's rankings, PPO and PPO-ptx (gptx/rlhf/stage.py)."""
    from gptx.rlhf import stage

    stage.run(cfg, workdir, report)


def stage_paradigms(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """GPT-1 vs GPT-3 on SST-2: fine-tuned from pretrained, from random init, and prompted (gptx/paradigms.py)."""
    from gptx import paradigms

    report.section("paradigms", paradigms.run(cfg, workdir, report.image_path("paradigms.png")))


STAGES: dict[str, Callable[[ml_collections.ConfigDict, str, Report], None]] = {
    "prepare": stage_prepare,
    "tokenizer": stage_tokenizer,
    "pretrain": stage_pretrain,
    "sample": stage_sample,
    "fewshot": stage_fewshot,
    "scaling": stage_scaling,
    "vision": stage_vision,
    "rlhf": stage_rlhf,
    "paradigms": stage_paradigms,
}
OPT_IN = ("vision", "rlhf", "paradigms")  # minutes of CPU each: run with --stages=...


def run(cfg: ml_collections.ConfigDict, workdir: str, stages: Sequence[str] | None = None) -> str:
    """Runs the named stages (all but the opt-in ones by default) in order; returns the path of report.md."""
    stages = list(stages or [s for s in STAGES if s not in OPT_IN])
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown demo stage(s) in --stages: {unknown}; stages: {', '.join(STAGES)}")
    os.makedirs(workdir, exist_ok=True)
    report = Report(workdir)
    for name in stages:
        print(f"== demo stage: {name}")
        STAGES[name](cfg, workdir, report)
    path = report.write()
    print(f"report: {path}")
    return path
