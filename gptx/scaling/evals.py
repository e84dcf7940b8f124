"""End-of-training evaluation of a sweep run on config.scaling.eval_tasks (the points of the capability law).

Each run's final checkpoint is evaluated in-process with gptx.eval's harness (the `eval` command's own
functions: the same prompts, sampling, sandbox and pass@k), under config.eval's settings (samples, temperature,
limit, sandbox limits) with the task list and shot count of config.scaling. The sweep's result row keeps, per
task, the aggregate metrics and, for code and generation tasks, each problem's sample count n and passing count
c: what the capability law's pass rates are estimated from. The per-example records go beside the run's
checkpoints (RUN_DIR/eval_results.examples.jsonl), as the `eval` command writes them.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from gptx import fs
from gptx.eval import command, harness, sandbox
from gptx.eval import tasks as T

EXAMPLES = "eval_results.examples.jsonl"


def eval_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """config.eval with the sweep's tasks and shot count (everything else, e.g. eval.samples, as configured)."""
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.eval.update(tasks=cfg.scaling.eval_tasks, shots=str(cfg.scaling.eval_shots), examples=0, output="")
    return c


def validate(cfg: ml_collections.ConfigDict) -> None:
    """ConfigError for eval tasks or settings that cannot run (called before the first run trains)."""
    if cfg.scaling.eval_tasks:
        command.validate_eval(eval_config(cfg))


def problem_counts(kind: str, records: list[dict[str, Any]]) -> dict[str, list[int]] | None:
    """{"doc", "n", "c"} per problem from the harness's per-example records: code tasks count their sandbox
    passes over n samples; generation tasks are one greedy sample, passing on exact match."""
    if kind == T.CODE:
        ns = [len(r["statuses"]) for r in records]
        cs = [sum(s == sandbox.PASSED for s in r["statuses"]) for r in records]
    elif kind == T.GENERATE:
        ns = [1] * len(records)
        cs = [int(r["metrics"]["exact_match"] > 0) for r in records]
    else:
        return None
    return {"doc": [int(r["doc"]) for r in records], "n": ns, "c": cs}


def summarize(out: dict[str, Any], per_example: list[dict[str, Any]], shots: int) -> dict[str, dict[str, Any]]:
    """The result row's "eval" entry: {task: {kind, metrics, [problems]}} at the sweep's shot count."""
    summary = {}
    for task, per_shot in out["results"].items():
        res = per_shot[shots] if shots in per_shot else per_shot[min(per_shot)]  # perplexity tasks: 0-shot only
        metrics = {k: v for k, v in res.items() if k not in harness.SUMMARY_FIELDS}
        kind = out["tasks"][task]["kind"]
        entry: dict[str, Any] = {"kind": kind, "metrics": metrics, "n": res["n"]}
        counts = problem_counts(kind, [r for r in per_example if r["task"] == task and r["shots"] == shots])
        if counts is not None:
            entry["problems"] = counts
        summary[task] = entry
    return summary


def evaluate_run(cfg: ml_collections.ConfigDict, run_dir: str) -> dict[str, dict[str, Any]]:
    """Evaluates the latest checkpoint in run_dir on config.scaling.eval_tasks; the result row's "eval" entry."""
    ecfg = eval_config(cfg)
    lm = command.load_lm(ecfg, run_dir)
    per_example: list[dict[str, Any]] = []
    out = command.evaluate(ecfg, lm, None, per_example)
    if jax.process_index() == 0:
        command.write_jsonl(fs.join(run_dir, EXAMPLES), per_example)
    return summarize(out, per_example, int(cfg.scaling.eval_shots))
