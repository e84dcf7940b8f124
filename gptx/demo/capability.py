"""The demo's `capability` stage (opt-in): GPT-4's capability prediction on a sweep of small models.

Every run trains on the bundled corpus mixed with generated max-of-four-digits problems
(gptx/scaling/capability_data.py) and is evaluated on the held-out ones (`max_digit_code`: n samples per problem
at temperature 1, run against unit tests in the sandbox). −E_P[log pass_rate] = α·C^−k is fitted on the smaller
runs and the largest run's pass rate is predicted, and frozen in prediction.json, before it trains.
"""

from __future__ import annotations

import json
import os
import shutil

import ml_collections
import numpy as np

from gptx import scaling as scaling_lib
from gptx.demo.report import Report

# The stage's sweep when config.scaling sets no task_data (configs/scaling.py:capability is the same sweep as a
# command): 4 widths fitted, d72 held out at ~7x the largest fitted run's compute.
SWEEP = dict(n_sizes=5, d_models=(16, 24, 32, 40, 72), n_layer_min=2, n_layer_max=2, head_dim=8,
             tokens_per_param=20.0, min_steps=300, holdout=1, bootstrap=0, task_data="max_digit",
             task_data_weight=0.3, eval_tasks="max_digit_code", capability_task="max_digit_code")  # fmt: skip


def sweep_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The demo config as a capability sweep: config.scaling as given when it sets task_data, else SWEEP; the
    sweep trains its own tokenizer on the mixed corpus (digits included)."""
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.model.update(name="capability", block_size=64, dropout=0.0, attn_dropout=0.0, vocab_size=512)
    c.tokenizer.vocab_size = 512
    c.data.update(tokenizer="", seq_len=0, val_fraction=0.05)
    c.train.update(batch_size=16, lr=3e-3, warmup_steps=20, eval_batches=16, weight_decay=0.1, progress=False)
    c.eval.update(sandbox_workers=c.eval.sandbox_workers or 2)
    if not c.scaling.task_data:
        c.scaling.update(SWEEP)
    if not c.scaling.capability_task:
        c.scaling.capability_task = c.scaling.eval_tasks.split(",")[0]
    return c


def _run_rows(results: dict[str, dict], task: str, problems: list[int]) -> str:
    """Markdown rows: each run's size, loss, mean pass@1 over all problems and −E_P[log pass_rate] over P."""
    rows = []
    for r in sorted(results.values(), key=lambda r: r["compute"]):
        counts = scaling_lib.capability.pass_counts([r], task)
        rate = counts.c[0] / np.maximum(counts.n[0], 1)
        y = scaling_lib.measure_capability(counts, problems)["measured"] if problems else float("nan")
        rows.append(
            f"| {r['name']} | {r['n_params']:,} | {r['compute']:.2e} | {r['loss']:.3f} | {rate.mean():.3f} | {y:.3f} |"
        )
    return "\n".join(rows)


def _target_rows(cap: dict) -> str:
    """Markdown rows: the frozen prediction of each held-out run against its measurement."""
    rows = []
    for t in cap["targets"]:
        lo, hi = t["interval"]
        glo, ghi = t["geomean_pass_interval"]
        if t.get("measured") is None:
            measured, error, covers = "not trained", "n/a", "n/a"
        else:
            measured = f"{t['measured']:.3f} ({t['measured_geomean_pass']:.3f})"
            error = f"{100 * t['rel_error']:+.1f}%" if t.get("rel_error") is not None else "n/a"
            covers = "yes" if t["within_interval"] else "no"
        rows.append(
            f"| {t['name']} | {t['predicted']:.3f} [{lo:.3f}, {hi:.3f}] | {t['predicted_geomean_pass']:.3f} "
            f"[{glo:.3f}, {ghi:.3f}] | {measured} | {error} | {covers} |"
        )
    return "\n".join(rows)


def stage(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """Capability prediction: sweep, frozen prediction of the largest run, table and plot against the measurement."""
    sweep_cfg = sweep_config(cfg)
    run_dir = os.path.join(workdir, "capability")
    results = scaling_lib.sweep(sweep_cfg, run_dir)
    with open(os.path.join(run_dir, scaling_lib.PREDICTION)) as f:
        pred = json.load(f)
    cap = pred.get("capability") or {}
    shutil.copy(os.path.join(run_dir, "prediction.png"), report.image_path("capability_prediction.png"))
    s = sweep_cfg.scaling
    if not cap.get("law"):
        body = f"No capability law could be fitted: {cap.get('note', 'no evaluated task')}.\n"
    else:
        fitted = [r for r in results.values() if r["name"] in pred["fit_on"]]
        span = max(r["compute"] for r in fitted) / min(r["compute"] for r in fitted)
        factor = cap["targets"][0]["target_compute"] / max(r["compute"] for r in fitted)
        body = (
            f"{len(fitted)} runs spanning {span:.0f}x in compute are fitted; the held-out run has {factor:.1f}x the "
            f"largest fitted run's compute. Task `{cap['task']}`: {cap['evaluated']} problems, "
            f"{len(cap['problems'])} solved at least once by every fitted run (P; {cap['dropped']} dropped), "
            f"law α = {cap['law']['alpha']:.3g}, k = {cap['law']['k']:.3f}. The prediction was written at "
            f"{pred['made_at']}, before the held-out run trained.\n\n"
            "| run | parameters | compute (FLOPs) | eval loss | mean pass@1 | −E_P[log pass] |\n"
            f"|---|---|---|---|---|---|\n{_run_rows(results, cap['task'], cap['problems'])}\n\n"
            f"| held-out run | predicted −E_P[log pass] [{int(100 * s.ci)}%] | predicted geo-mean pass rate | "
            "measured (geo-mean) | error | covered |\n|---|---|---|---|---|---|\n"
            f"{_target_rows(cap)}\n"
        )
    report.section(
        "capability",
        "## Capability prediction (GPT-4 report)\n\n"
        f"Generated problems ({s.task_data}, {100 * s.task_data_weight:.0f}% of the training bytes; the evaluated "
        "problems never occur in training) are solved more often as compute grows. " + body + "\n"
        "![capability prediction](report/capability_prediction.png)\n",
    )
