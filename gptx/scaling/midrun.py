"""Evaluation of a sweep run at intermediate checkpoints (config.scaling.eval_at): the capability along training.

The run trains in segments that end at the requested steps; after each, its latest checkpoint (the segment's last
step) is evaluated as the final one is. Every segment keeps the whole run's learning-rate schedule (warmup and a
cosine ending at the run's last step) and resumes the data where the previous one stopped, so the segmented run
is the uninterrupted one with evaluations in between. Each evaluation is appended to RUN_DIR/eval_steps.jsonl as
it finishes, so a resumed sweep does not redo it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import ml_collections

from gptx import fs
from gptx.train import checkpoints, pretrain

EVAL_STEPS = "eval_steps.jsonl"


def eval_steps(fractions, steps: int) -> list[int]:
    """The distinct steps strictly inside (0, steps) at the given fractions of the run, ascending."""
    return sorted({max(1, round(float(f) * steps)) for f in fractions if 0 < f < 1} - {steps})


def read(run_dir: str) -> dict[int, dict[str, Any]]:
    """The stored intermediate evaluations of a run, by step."""
    path = fs.join(run_dir, EVAL_STEPS)
    if not fs.exists(path):
        return {}
    rows = [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]
    return {int(r["step"]): r for r in rows}


def train(
    cfg: ml_collections.ConfigDict,
    run_dir: str,
    evaluate: Callable[[ml_collections.ConfigDict, str], dict[str, Any]],
    tokens_per_step: int,
    flops_per_token: float,
) -> list[dict[str, Any]]:
    """Trains cfg in run_dir to cfg.train.steps, evaluating (evaluate(cfg, run_dir)) at each config.scaling.eval_at
    step; returns [{"step", "tokens", "compute" (FLOPs), "eval"}] ascending by step."""
    steps = int(cfg.train.steps)
    whole = ml_collections.ConfigDict(cfg.to_dict())
    whole.train.decay_steps = cfg.train.decay_steps or steps  # every segment follows the whole run's schedule
    done = read(run_dir)
    for step in eval_steps(cfg.scaling.eval_at, steps):
        if step in done:
            continue
        latest = checkpoints.latest_step(run_dir) if fs.exists(run_dir) else None
        if latest is not None and latest > step:
            continue  # trained past it before evaluations were asked for: that checkpoint is gone
        seg = ml_collections.ConfigDict(whole.to_dict())
        seg.train.steps = step
        pretrain.run(seg, run_dir)
        row = {"step": step, "tokens": step * tokens_per_step, "compute": step * tokens_per_step * flops_per_token,
               "eval": evaluate(cfg, run_dir)}  # fmt: skip
        fs.append_text(fs.join(run_dir, EVAL_STEPS), json.dumps(row) + "\n")
        done[step] = row
    pretrain.run(whole, run_dir)
    return [done[s] for s in sorted(done)]
