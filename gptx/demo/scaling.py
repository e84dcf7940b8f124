"""The demo's `scaling` stage: GPT-4-style predictable scaling on a sweep of small models, the largest one
predicted from the others before it trains (gptx/scaling)."""

from __future__ import annotations

import json
import os
import shutil

import ml_collections

from gptx import scaling as scaling_lib
from gptx.demo import tokenizer
from gptx.demo.report import Report


def sweep_config(cfg: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The demo config shrunk for a sweep: the demo's tokenizer shared by all runs, sizes from config.scaling."""
    c = tokenizer.demo_config(cfg, workdir, train=True)
    # Short contexts and small batches keep five runs within a few CPU minutes; sizes come from config.scaling.
    c.model.update(name="scaling", block_size=64, dropout=0.0, attn_dropout=0.0)
    c.data.seq_len = 0
    c.train.update(batch_size=16, warmup_steps=20, eval_batches=16, progress=False)
    return c


def tables(results: dict[str, dict], pred: dict) -> tuple[str, str]:
    """(the runs table rows, the predictions table rows) in Markdown."""
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
    return rows, "\n".join(lines)


def stage(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """GPT-4-style predictable scaling: a sweep of small models, the largest predicted before it trains."""
    sweep_cfg = sweep_config(cfg, workdir)
    run_dir = os.path.join(workdir, "scaling")
    results = scaling_lib.sweep(sweep_cfg, run_dir)
    with open(os.path.join(run_dir, scaling_lib.PREDICTION)) as f:
        pred = json.load(f)
    shutil.copy(os.path.join(run_dir, "prediction.png"), report.image_path("scaling_prediction.png"))
    rows, lines = tables(results, pred)
    span = max(r["compute"] for r in results.values()) / min(r["compute"] for r in results.values())
    report.section(
        "scaling",
        f"## 4. Predictable scaling (GPT-4 report)\n\n{len(results)} runs spanning {span:.0f}x in training compute "
        f"(FLOPs counted as for MFU). L(C) = a·C^b + c is fitted on all but the largest run and predicts it "
        f"before it trains ({int(100 * sweep_cfg.scaling.ci)}% bootstrap interval).\n\n"
        f"| run | parameters | compute (FLOPs) | final eval loss |\n|---|---|---|---|\n{rows}\n\n"
        f"| predicted run | prediction [interval] | measured | error |\n|---|---|---|---|\n{lines}\n\n"
        "![scaling prediction](report/scaling_prediction.png)\n",
    )
