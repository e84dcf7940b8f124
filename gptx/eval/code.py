"""Functional correctness of generated code (Chen et al. 2021): programs from completions, run in the sandbox,
scored by pass@k.

Two record formats:
  humaneval  {"task_id", "prompt", "canonical_solution", "test", "entry_point"}: the completion continues the
             prompt (a signature and docstring); the program is prompt + completion + test + check(entry_point)
  mbpp       {"text", "code", "test_list", ["test_setup_code"]}: the completion is a whole function; the
             program is completion + test_setup_code + the asserts of test_list

A doc is scored from its n samples: c of them pass, and pass@k is the unbiased estimate for each k <= n.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from gptx.eval import metrics as M
from gptx.eval import sandbox

HUMANEVAL, MBPP = "humaneval", "mbpp"
FIELDS = {
    HUMANEVAL: ("prompt", "canonical_solution", "test", "entry_point"),
    MBPP: ("text", "code", "test_list"),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a code task is sampled and run; 0 / negative values mean "the task's own"."""

    samples: int = 0  # n completions per problem
    temperature: float = -1.0
    top_p: float = 0.0
    limits: sandbox.Limits = sandbox.Limits()
    workers: int = 0  # programs run at once; 0: one per CPU core


def program(fmt: str, doc: dict[str, Any], completion: str) -> str:
    """The Python program that passes (exits normally) exactly when the completion solves the doc."""
    if fmt == HUMANEVAL:
        return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"
    if fmt == MBPP:
        tests = "\n".join(doc["test_list"])
        return f"{completion}\n\n{doc.get('test_setup_code', '')}\n{tests}\n"
    raise ValueError(f"unknown code format {fmt!r}; formats: {', '.join(FIELDS)}")


def reference_solution(fmt: str, doc: dict[str, Any]) -> str:
    """The record's own solution, as a completion."""
    return doc["canonical_solution"] if fmt == HUMANEVAL else doc["code"]


def score_samples(
    fmt: str,
    docs: Sequence[dict[str, Any]],
    samples: Sequence[Sequence[str]],
    ks: Sequence[int],
    settings: Settings = Settings(),
) -> tuple[dict[str, list[float]], list[list[sandbox.Result]]]:
    """({"pass@k": per-doc estimates for each k <= n}, each doc's per-sample sandbox results).

    samples[i] are doc i's n completions (every doc has the same n); programs run `settings.workers` at a time.
    """
    n = len(samples[0]) if samples else 0
    if any(len(s) != n for s in samples):
        raise ValueError("every doc needs the same number of samples")
    programs = [program(fmt, d, c) for d, s in zip(docs, samples, strict=True) for c in s]
    flat = sandbox.run_programs(programs, settings.limits, settings.workers)
    results = [flat[i * n : (i + 1) * n] for i in range(len(docs))]
    out: dict[str, list[float]] = {f"pass@{k}": [] for k in ks if k <= n}
    for per_doc in results:
        c = sum(r.status == sandbox.PASSED for r in per_doc)
        for k in ks:
            if k <= n:
                out[f"pass@{k}"].append(M.pass_at_k(n, c, k))
    return out, results
