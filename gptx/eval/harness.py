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
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from gptx.eval import code, corpus_metrics, overlap, sandbox
from gptx.eval import metrics as M
from gptx.eval import tasks as T
from gptx.eval.requests import LM

log = logging.getLogger(__name__)


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
    # first_n: the pool in its own order (lm-eval's first_n sampler), for demonstrations fixed by the task
    order = range(len(pool)) if task.fewshot_sampler == "first_n" else rng.permutation(len(pool))
    for j in order:
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
        if task.kind in (T.GENERATE, T.CODE):
            return lm.count_tokens(text) + max_new_tokens <= lm.max_len
        answers = task.choice_texts(doc) if task.kind == T.CHOICE else [task.answer(doc)]
        longest = max(answers, key=len)
        return lm.count_tokens(text + task.target_delimiter + longest) <= lm.max_len + 1

    return fits


# ---------------------------------------------------------------------------------------------------------------
# Scoring, one function per kind: per-example metric values and per-example details (what the per-example JSONL
# records: the choices' log-likelihoods, the generation, the samples and their sandbox results)

Scored = tuple[dict[str, list], list[dict[str, Any]]]


def score_choice(task: T.Task, lm: LM, docs: Sequence[dict], prompts: Sequence[Prompt]) -> Scored:
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
    details = []
    at = 0
    for doc in docs:
        choices, gold = task.choice_texts(doc), task.gold_index(doc)
        lps = scores[at : at + len(choices)]
        if "acc" in out:
            out["acc"].append(M.choice_acc(lps, gold))
        if "acc_norm" in out:
            out["acc_norm"].append(M.choice_acc_norm(lps, choices, gold))
        detail = {"choices": choices, "gold": gold, "loglikelihoods": lps}
        if uncond_scores is not None:
            detail["uncond_loglikelihoods"] = uncond_scores[at : at + len(choices)]
            out["acc_uncond"].append(M.choice_acc_uncond(lps, detail["uncond_loglikelihoods"], gold))
        details.append(detail)
        at += len(choices)
    return out, details


def score_completion(task: T.Task, lm: LM, docs: Sequence[dict], prompts: Sequence[Prompt]) -> Scored:
    """acc: the whole target is the greedy continuation; ppl is aggregated from the log-likelihoods."""
    targets = [task.target_delimiter + task.answer(d) for d in docs]
    results = lm.loglikelihood([(p.text, t) for p, t in zip(prompts, targets, strict=True)])
    out: dict[str, list[float]] = {}
    if "acc" in task.active_metrics:
        out["acc"] = [float(r.is_greedy) for r in results]
    if "ppl" in task.active_metrics:
        out["_logprob"] = [r.logprob for r in results]
    details = [
        {"target": t, "loglikelihood": r.logprob, "is_greedy": r.is_greedy}
        for t, r in zip(targets, results, strict=True)
    ]
    return out, details


def score_generate(
    task: T.Task,
    lm: LM,
    docs: Sequence[dict],
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    grader: M.Grader | None = None,
) -> Scored:
    """Exact match of the extracted, normalised answer; the overlap metrics the task asks for (per example; BLEU
    and chrF keep the (answer, reference) pairs for their corpus-level score); `graded` from the grader when one
    is given."""
    gens = lm.generate_until([(p.text, task.until) for p in prompts], max_new_tokens)
    answers = [M.extract_answer(g, task.extract, task.extract_fallback) for g in gens]
    refs = [task.reference(d) for d in docs]
    out = {"exact_match": [M.exact_match(a, r, task.normalization) for a, r in zip(answers, refs, strict=True)]}
    for name in (m for m in task.active_metrics if m in overlap.NAMES):  # SQuAD F1, ROUGE: on the answers
        score = overlap.metric(name)
        out[name] = [score(a, r) for a, r in zip(answers, refs, strict=True)]
    for name in (m for m in task.active_metrics if m in corpus_metrics.NAMES):  # corpus-level: aggregate()
        out[f"_{name}"] = list(zip(answers, refs, strict=True))
    if grader is not None:
        items = [(task.render_context(d), g, r) for d, g, r in zip(docs, gens, refs, strict=True)]
        many = getattr(grader, "grade_many", None)
        out["graded"] = many(items) if many else [float(grader(*it)) for it in items]
    details = [{"generation": g, "answer": a, "reference": r} for g, a, r in zip(gens, answers, refs, strict=True)]
    return out, details


def score_code(
    task: T.Task,
    lm: LM,
    docs: Sequence[dict],
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    settings: code.Settings,
    seed: int = 0,
) -> Scored:
    """n sampled completions per prompt (n copies of each request, batched together through the KV-cache
    decoder), each run against the doc's unit tests: pass@k per doc; the samples and their sandbox results."""
    n = settings.samples or task.samples
    temperature = settings.temperature if settings.temperature >= 0 else task.temperature
    top_p = settings.top_p or task.top_p
    requests = [(p.text, task.until) for p in prompts for _ in range(n)]
    gens = lm.generate_until(requests, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    samples = [gens[i * n : (i + 1) * n] for i in range(len(docs))]
    ks = [k for k in task.pass_k if k <= n]
    per, results = code.score_samples(task.program_format, docs, samples, ks, settings)
    details = [
        {"samples": gs, "statuses": [r.status for r in rs], "errors": [r.detail for r in rs]}
        for gs, rs in zip(samples, results, strict=True)
    ]
    return per, details


def score_perplexity(task: T.Task, lm: LM, docs: Sequence[dict], stride: int = 0) -> dict[str, list[float]]:
    rolled = lm.loglikelihood_rolling([task.render_context(d) for d in docs], stride)
    return {"_rolling": rolled}


def aggregate(per_example: dict[str, list]) -> dict[str, float]:
    """Means and standard errors; corpus-level bits per byte and perplexities for rolling scores, corpus BLEU and
    chrF (with bootstrap standard errors) for (answer, reference) pairs."""
    per_example = dict(per_example)
    out: dict[str, float] = {}
    for name in corpus_metrics.NAMES:
        pairs = per_example.pop(f"_{name}", None)
        if pairs is not None:
            out.update(corpus_metrics.aggregate(name, pairs))
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
    malformed_lines: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # file -> lines (first 100)


def load_task(task: T.Task, data_dir: str, limit: int = 0) -> TaskData:
    """The first `limit` test docs (all when 0) and the few-shot pool of a task."""
    test = T.load_docs(task, task.test, data_dir)
    malformed, lines = {test.path: test.malformed}, {test.path: test.malformed_lines[:100]}
    if task.fewshot:
        fewshot = T.load_docs(task, task.fewshot, data_dir)
        malformed[fewshot.path], lines[fewshot.path] = fewshot.malformed, fewshot.malformed_lines[:100]
        pool = fewshot.docs
    else:
        pool = test.docs
    docs = list(enumerate(test.docs))[: limit or None]
    return TaskData(task, docs, pool, task.fewshot is None, malformed, lines)


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
    code_settings: code.Settings | None = None,
    per_example: list[dict[str, Any]] | None = None,
) -> dict[int, dict[str, Any]]:
    """{shots: {metric: value, metric_stderr: se, n, mean_shots, fewer_shots}} of one task; perplexity tasks run
    0-shot only. `fewer_shots` counts the docs whose prompt holds fewer demonstrations than asked (they did not
    fit the context, or the pool is smaller); a task where that happens is warned about once.

    `examples` > 0 keeps that many (prompt, answer/generation) pairs per shot count under "examples";
    `per_example`, when given, receives one record per doc and shot count (see `example_records`).
    """
    task = data.task
    docs = [d for _, d in data.docs]
    if task.kind == T.PERPLEXITY:
        rolled = score_perplexity(task, lm, docs, rolling_stride)
        if per_example is not None:
            per_example += [
                {"task": task.name, "shots": 0, "doc": i, "text": task.render_context(d), "loglikelihood": r.logprob,
                 "n_tokens": r.n_tokens, "n_bytes": r.n_bytes}
                for (i, d), r in zip(data.docs, rolled["_rolling"], strict=True)
            ]  # fmt: skip
        return {0: {**aggregate(rolled), "n": len(docs), "mean_shots": 0.0, "fewer_shots": 0}}
    # A generation budget beyond the context is cut to half of it, leaving the other half to the prompt.
    new_tokens = min(max_new_tokens or task.max_new_tokens, lm.max_len // 2)
    fits = _fits(task, lm, new_tokens)
    results, short = {}, {}
    for k in shots:
        prompts = make_prompts(task, data.docs, data.pool, k, seed, data.same_file, fits)
        if task.kind == T.CHOICE:
            per, details = score_choice(task, lm, docs, prompts)
        elif task.kind == T.COMPLETION:
            per, details = score_completion(task, lm, docs, prompts)
        elif task.kind == T.CODE:
            per, details = score_code(task, lm, docs, prompts, new_tokens, code_settings or code.Settings(), seed)
        else:
            per, details = score_generate(task, lm, docs, prompts, new_tokens, grader)
        used = [len(p.demos) for p in prompts]
        res = {**aggregate(per), "n": len(docs), "mean_shots": float(np.mean(used))}
        res["fewer_shots"] = sum(u < k for u in used)
        if res["fewer_shots"]:
            short[k] = (res["fewer_shots"], res["mean_shots"])
        if task.kind in (T.GENERATE, T.CODE):
            res["max_new_tokens"] = new_tokens
        if task.kind == T.CODE:
            res["statuses"] = {s: sum(st == s for d in details for st in d["statuses"]) for s in sandbox.STATUSES}
        if examples:
            res["examples"] = [
                {"prompt": p.text, "answer": task.answer(d), **_generation(det)}
                for d, p, det in zip(docs[:examples], prompts[:examples], details, strict=False)
            ]
        if per_example is not None:
            per_example += example_records(task.name, k, data.docs, prompts, per, details)
        results[k] = res
    if short:
        log.warning(
            "%s: %s: demonstrations dropped to fit the context (%d tokens) or the few-shot pool (%d docs)",
            task.name, "; ".join(f"K={k} used fewer for {n}/{len(docs)} docs (mean {m:.2f})"
                                 for k, (n, m) in short.items()),
            lm.max_len, len(data.pool),
        )  # fmt: skip
    return results


def _generation(detail: dict[str, Any]) -> dict[str, Any]:
    if "generation" in detail:
        return {"generation": detail["generation"]}
    return {"generation": detail["samples"][0]} if "samples" in detail else {}


def example_records(
    name: str, k: int, docs: Sequence[tuple[int, dict]], prompts: Sequence[Prompt], per: dict[str, list], details
) -> list[dict[str, Any]]:
    """One JSON-able record per doc: task, shots asked, shots used, the doc's index in its file, the prompt, what
    was scored (choices and their log-likelihoods, the target, the generation or the samples and their sandbox
    results) and the doc's own metric values."""
    out = []
    for i, ((index, _), p, detail) in enumerate(zip(docs, prompts, details, strict=True)):
        metrics = {m: v[i] for m, v in per.items() if not m.startswith("_")}
        out.append({"task": name, "shots": k, "shots_used": len(p.demos), "doc": index, "prompt": p.text,
                    **detail, "metrics": metrics})  # fmt: skip
    return out


# Not metrics: no table rows
SUMMARY_FIELDS = ("n", "mean_shots", "fewer_shots", "examples", "max_new_tokens", "statuses")


def format_table(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    """A plain-text table: task, shots (asked), used (mean demonstrations that fitted), metric, value, stderr, n."""
    rows = [("task", "shots", "used", "metric", "value", "stderr", "n")]
    for name, per_shot in results.items():
        for k, res in sorted(per_shot.items()):
            for metric, value in res.items():
                if metric.endswith("_stderr") or metric in SUMMARY_FIELDS:
                    continue
                se = res.get(f"{metric}_stderr")
                used = f"{res['mean_shots']:.0f}" if res["mean_shots"] == k else f"{res['mean_shots']:.2f}"
                se_text = "" if se is None else f"{se:.4f}"
                rows.append((name, str(k), used, metric, f"{value:.4f}", se_text, str(res["n"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i in (0, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
