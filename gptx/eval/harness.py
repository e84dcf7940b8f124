"""In-context learning evaluation (GPT-3, Sec. 2): 0-, 1- and K-shot prompts, requests, scores.

A K-shot prompt is

    description + demo_1 + D + demo_2 + D + ... + demo_K + D + context(test doc)

with D the task's few-shot delimiter and demo_i = context(doc_i) + target delimiter + answer(doc_i). The
demonstrations of the test doc at index i are drawn from the task's few-shot pool by a generator seeded with
(seed, i), never the test doc itself (same index in the same file) nor any doc with the same prompt, so the same
seed gives the same prompts whatever the batch size, limit or other docs; a doc's K-shot demonstrations extend
its (K-1)-shot ones. When a prompt plus its answer does not fit the model's context, demonstrations are dropped
from the front until it does (`mean_shots` reports how many were used), as the GPT-3 paper fits K to n_ctx.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from gptx.eval import metrics as M
from gptx.eval import tasks as T
from gptx.eval.requests import LM


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str
    demos: tuple[int, ...]  # indices into the few-shot pool, in prompt order


def sample_demonstrations(
    task: T.Task, pool: Sequence[dict], k: int, seed: int, doc_index: int, doc: dict, same_file: bool
) -> list[int]:
    """Indices of k demonstrations for the doc at doc_index: a seeded order of the pool minus the test doc."""
    if k <= 0:
        return []
    rng = np.random.default_rng([seed, doc_index])
    question = _question(task, doc)
    out: list[int] = []
    for j in rng.permutation(len(pool)):
        j = int(j)
        if (same_file and j == doc_index) or _question(task, pool[j]) == question:
            continue  # never the test example, nor a copy of its question
        out.append(j)
        if len(out) == k:
            break
    return out


def _question(task: T.Task, doc: dict) -> str:
    """What identifies a test example in a prompt: its context, or its answer when the context is empty."""
    return task.render_context(doc) or task.answer(doc)


def build_prompt(task: T.Task, doc: dict, demos: Sequence[dict]) -> str:
    parts = [task.demonstration(d) for d in demos] + [task.render_context(doc)]
    return task.description + task.fewshot_delimiter.join(parts)


def make_prompts(
    task: T.Task,
    docs: Sequence[tuple[int, dict]],
    pool: Sequence[dict],
    k: int,
    seed: int,
    same_file: bool,
    fits=None,
) -> list[Prompt]:
    """The prompt of each (index, doc). fits(prompt text, doc) -> bool drops leading demonstrations until true."""
    out = []
    for i, doc in docs:
        ids = sample_demonstrations(task, pool, k, seed, i, doc, same_file)
        text = build_prompt(task, doc, [pool[j] for j in ids])
        while ids and fits is not None and not fits(text, doc):
            ids = ids[1:]
            text = build_prompt(task, doc, [pool[j] for j in ids])
        out.append(Prompt(text, tuple(ids)))
    return out


def _fits(task: T.Task, lm: LM, max_new_tokens: int):
    """Whether a prompt (with its longest answer, or room to generate) fits the model's context."""

    def fits(text: str, doc: dict) -> bool:
        if task.kind == T.GENERATE:
            return lm.count_tokens(text) + max_new_tokens <= lm.max_len
        answers = task.choice_texts(doc) if task.kind == T.CHOICE else [task.answer(doc)]
        longest = max(answers, key=len)
        return lm.count_tokens(text + task.target_delimiter + longest) <= lm.max_len + 1

    return fits


# ---------------------------------------------------------------------------------------------------------------
# Scoring, one function per kind: per-example metric values


def score_choice(task: T.Task, lm: LM, docs: Sequence[dict], prompts: Sequence[Prompt]) -> dict[str, list[float]]:
    wanted = task.active_metrics
    requests, uncond = [], []
    for doc, p in zip(docs, prompts, strict=True):
        for c in task.choice_texts(doc):
            requests.append((p.text, task.target_delimiter + c))
            uncond.append((task.answer_context, task.target_delimiter + c))
    scores = [s.logprob for s in lm.loglikelihood(requests)]
    # The unconditional requests repeat across docs for fixed label words; LM deduplicates them.
    uncond_scores = [s.logprob for s in lm.loglikelihood(uncond)] if "acc_uncond" in wanted else None
    out: dict[str, list[float]] = {m: [] for m in wanted}
    at = 0
    for doc in docs:
        choices, gold = task.choice_texts(doc), int(doc[task.label])
        lps = scores[at : at + len(choices)]
        if "acc" in out:
            out["acc"].append(M.choice_acc(lps, gold))
        if "acc_norm" in out:
            out["acc_norm"].append(M.choice_acc_norm(lps, choices, gold))
        if uncond_scores is not None:
            out["acc_uncond"].append(M.choice_acc_uncond(lps, uncond_scores[at : at + len(choices)], gold))
        at += len(choices)
    return out


def score_completion(task: T.Task, lm: LM, docs: Sequence[dict], prompts: Sequence[Prompt]) -> dict[str, list[float]]:
    """acc: the whole target is the greedy continuation; ppl is aggregated from the log-likelihoods."""
    results = lm.loglikelihood(
        [(p.text, task.target_delimiter + task.answer(d)) for d, p in zip(docs, prompts, strict=True)]
    )
    out: dict[str, list[float]] = {}
    if "acc" in task.active_metrics:
        out["acc"] = [float(r.is_greedy) for r in results]
    if "ppl" in task.active_metrics:
        out["_logprob"] = [r.logprob for r in results]
    return out


def score_generate(
    task: T.Task,
    lm: LM,
    docs: Sequence[dict],
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    grader: M.Grader | None = None,
) -> tuple[dict[str, list[float]], list[str]]:
    """Exact match of the extracted, normalised answer; `graded` from the grader when one is given."""
    gens = lm.generate_until([(p.text, task.until) for p in prompts], max_new_tokens)
    answers = [M.extract_answer(g, task.extract, task.extract_fallback) for g in gens]
    refs = [task.reference(d) for d in docs]
    out = {"exact_match": [M.exact_match(a, r, task.normalization) for a, r in zip(answers, refs, strict=True)]}
    if grader is not None:
        items = [(task.render_context(d), g, r) for d, g, r in zip(docs, gens, refs, strict=True)]
        many = getattr(grader, "grade_many", None)
        out["graded"] = many(items) if many else [float(grader(*it)) for it in items]
    return out, gens


def score_perplexity(task: T.Task, lm: LM, docs: Sequence[dict], stride: int = 0) -> dict[str, list[float]]:
    rolled = lm.loglikelihood_rolling([task.render_context(d) for d in docs], stride)
    return {"_rolling": rolled}


def aggregate(per_example: dict[str, list]) -> dict[str, float]:
    """Means and standard errors; corpus-level bits per byte and perplexities for rolling scores."""
    per_example = dict(per_example)
    out: dict[str, float] = {}
    logprobs = per_example.pop("_logprob", None)
    if logprobs is not None:
        out["ppl"], out["ppl_stderr"] = M.perplexity(logprobs)
    rolled = per_example.pop("_rolling", None)
    if rolled is not None:
        lp = sum(r.logprob for r in rolled)
        out["bits_per_byte"] = -lp / (np.log(2) * sum(r.n_bytes for r in rolled))
        out["word_perplexity"] = float(np.exp(-lp / sum(r.n_words for r in rolled)))
        out["token_perplexity"] = float(np.exp(-lp / sum(r.n_tokens for r in rolled)))
    out.update(M.summarize(per_example))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Tasks


@dataclasses.dataclass
class TaskData:
    """A task's evaluated docs (with their indices in the test file) and its few-shot pool."""

    task: T.Task
    docs: list[tuple[int, dict]]
    pool: list[dict]
    same_file: bool  # the pool is the test file
    malformed: dict[str, int]


def load_task(task: T.Task, data_dir: str, limit: int = 0) -> TaskData:
    """The first `limit` test docs (all when 0) and the few-shot pool of a task."""
    test = T.load_docs(task, task.test, data_dir)
    malformed = {test.path: test.malformed}
    if task.fewshot:
        fewshot = T.load_docs(task, task.fewshot, data_dir)
        malformed[fewshot.path] = fewshot.malformed
        pool = fewshot.docs
    else:
        pool = test.docs
    docs = list(enumerate(test.docs))[: limit or None]
    return TaskData(task, docs, pool, task.fewshot is None, malformed)


def evaluate_task(
    lm: LM,
    data: TaskData,
    shots: Sequence[int],
    *,
    seed: int = 1234,
    max_new_tokens: int = 0,
    rolling_stride: int = 0,
    grader: M.Grader | None = None,
    examples: int = 0,
) -> dict[int, dict[str, Any]]:
    """{shots: {metric: value, metric_stderr: se, n, mean_shots}} of one task; perplexity tasks run 0-shot only.

    `examples` > 0 keeps that many (prompt, answer/generation) pairs per shot count under "examples".
    """
    task = data.task
    docs = [d for _, d in data.docs]
    if task.kind == T.PERPLEXITY:
        return {0: {**aggregate(score_perplexity(task, lm, docs, rolling_stride)), "n": len(docs), "mean_shots": 0.0}}
    # A generation budget beyond the context is cut to half of it, leaving the other half to the prompt.
    new_tokens = min(max_new_tokens or task.max_new_tokens, lm.max_len // 2)
    fits = _fits(task, lm, new_tokens)
    results = {}
    for k in shots:
        prompts = make_prompts(task, data.docs, data.pool, k, seed, data.same_file, fits)
        gens = None
        if task.kind == T.CHOICE:
            per = score_choice(task, lm, docs, prompts)
        elif task.kind == T.COMPLETION:
            per = score_completion(task, lm, docs, prompts)
        else:
            per, gens = score_generate(task, lm, docs, prompts, new_tokens, grader)
        res = {**aggregate(per), "n": len(docs), "mean_shots": float(np.mean([len(p.demos) for p in prompts]))}
        if task.kind == T.GENERATE:
            res["max_new_tokens"] = new_tokens
        if examples:
            res["examples"] = [
                {"prompt": p.text, "answer": task.answer(d), **({"generation": gens[i]} if gens else {})}
                for i, (d, p) in enumerate(zip(docs[:examples], prompts[:examples], strict=True))
            ]
        results[k] = res
    return results


def format_table(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    """A plain-text table: task, shots, metric, value, stderr, n."""
    rows = [("task", "shots", "metric", "value", "stderr", "n")]
    for name, per_shot in results.items():
        for k, res in sorted(per_shot.items()):
            for metric, value in res.items():
                if metric.endswith("_stderr") or metric in ("n", "mean_shots", "examples", "max_new_tokens"):
                    continue
                se = res.get(f"{metric}_stderr")
                shots = f"{k}" if res["mean_shots"] == k else f"{k} ({res['mean_shots']:.1f})"
                se_text = "" if se is None else f"{se:.4f}"
                rows.append((name, shots, metric, f"{value:.4f}", se_text, str(res["n"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
