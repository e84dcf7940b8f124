"""The demo's `fewshot` stage: the GPT-3 figure "accuracy vs number of demonstrations" for the demo model.

The task is built from the demo corpus itself (`shakespeare_lastword` in gptx/eval/tasks.py): pick the last
word of a held-out speech's first line among four, the other three being last words of training lines of about
the answer's frequency (chance 25%, and a context-free frequency baseline about the same, reported beside it).
Demonstrations are other held-out lines with their last word, joined by newlines as verse is.
The model's context (128 tokens) bounds K: demonstrations that do not fit are dropped, and the plot's x axis
is the number actually used.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections

from gptx import mesh as mesh_lib
from gptx.demo import report as report_lib
from gptx.demo import tokenizer
from gptx.eval import harness, taskfile
from gptx.eval import tasks as T
from gptx.eval.requests import LM
from gptx.train import logs, pretrain

TASK = "shakespeare_lastword"
SHOTS = (0, 1, 2, 4)
LIMIT = 200


def evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> tuple[dict[int, dict], int, int]:
    """(harness results per K, held-out lines scored, parameters) of the demo's pretrained model (WORKDIR/pretrain)."""
    cfg = tokenizer.demo_config(cfg, workdir)
    model, params, tok = pretrain.load_trained(cfg, os.path.join(workdir, "pretrain"))
    lm = LM(model, params, tok, batch_size=max(cfg.eval.batch_size, 32), mesh=mesh_lib.make_mesh(cfg.mesh))
    data = harness.load_task(taskfile.get(TASK), cfg.eval.data_dir, LIMIT)
    results = harness.evaluate_task(lm, data, SHOTS, seed=cfg.eval.seed)
    return results, len(data.docs), sum(x.size for x in jax.tree.leaves(params))


def stage(cfg: ml_collections.ConfigDict, workdir: str, report: report_lib.Report) -> None:
    """GPT-3 in-context learning: the pretrained model 0/1/K-shot on held-out lines, accuracy vs demonstrations.
    Writes WORKDIR/fewshot.json, the plot and the report section."""
    t0 = time.perf_counter()
    results, n_docs, n_params = evaluate(cfg, workdir)
    # What knowing word frequencies alone scores (the distractors are matched to the answer's frequency so that
    # it is chance): the floor the curve must clear before it shows reading the context.
    docs = [d for _, d in harness.load_task(taskfile.get(TASK), cfg.eval.data_dir, LIMIT).docs]
    baseline = T.frequency_baseline(docs)
    logs.write_json(
        os.path.join(workdir, "fewshot.json"), {"task": TASK, "results": results, "frequency_baseline": baseline}
    )
    title = f"{cfg.model.name}: {TASK}, {n_docs} held-out lines"
    report_lib.plot_accuracy_vs_shots(results, 0.25, report.image_path("fewshot.png"), title)
    rows = "\n".join(
        f"| {k} | {r['mean_shots']:.1f} | {r['acc']:.3f} ± {r['acc_stderr']:.3f} | "
        f"{r['acc_norm']:.3f} ± {r['acc_norm_stderr']:.3f} |"
        for k, r in sorted(results.items())
    )
    gain = results[max(SHOTS)]["acc"] - results[0]["acc"]
    report.section(
        "fewshot",
        "## 5. In-context learning (GPT-3)\n\n"
        f"The pretrained model, without any gradient step, on `{TASK}` ({n_docs} held-out speeches): "
        "choose the last word of a speech's first line among four (three are last words of training lines of "
        f"about the answer's frequency; chance 25%, picking the most frequent word {100 * baseline:.1f}%), scored "
        "by log-likelihood (`acc`) and per character (`acc_norm`). K demonstrations are other "
        "held-out lines with their answer, drawn with a seed, never the line itself; the 128-token context fits "
        "only a few, so K is the number actually used.\n\n"
        "| K asked | K used | acc ± stderr | acc_norm ± stderr |\n|---|---|---|---|\n"
        f"{rows}\n\n"
        f"From 0 to {results[max(SHOTS)]['mean_shots']:.1f} demonstrations accuracy changes by {100 * gain:+.1f} "
        f"points. In GPT-3 (Fig. 1.2) the gain from demonstrations grows with model size and is small for its "
        f"smallest model (125M parameters); this one has {n_params / 1e6:.2f}M. "
        f"Stage took {time.perf_counter() - t0:.0f} s.\n\n"
        "![accuracy vs demonstrations](report/fewshot.png)\n",
    )
