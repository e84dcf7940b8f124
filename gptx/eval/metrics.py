"""Metrics of the harness: multiple-choice accuracies, exact match, perplexity, their standard errors, and
model-graded scores.

Multiple choice (GPT-3, Sec. 2.4): a choice's score is log P(choice | prompt) summed over its tokens (`acc`);
divided by the choice's length in characters (`acc_norm`, lm-evaluation-harness's normalisation, which removes
the bias towards short answers); or minus log P(choice | answer_context) with a task-neutral answer context
such as "Answer:" (`acc_uncond`, the GPT-3 paper's normalisation by the unconditional probability of the
completion, used there for ARC, OpenBookQA and RACE).
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# (prompt, answer, reference) -> a score in [0, 1]
Grader = Callable[[str, str, str], float]


def pick(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the first (as numpy's argmax)."""
    return int(np.argmax(np.asarray(scores, np.float64)))


def choice_acc(logprobs: Sequence[float], gold: int) -> float:
    """1.0 when the choice with the highest summed log-likelihood is the gold one."""
    return float(pick(logprobs) == gold)


def choice_acc_norm(logprobs: Sequence[float], choices: Sequence[str], gold: int) -> float:
    """Accuracy with each log-likelihood divided by its choice's length in characters."""
    return float(pick([lp / max(len(c), 1) for lp, c in zip(logprobs, choices, strict=True)]) == gold)


def choice_acc_uncond(logprobs: Sequence[float], uncond_logprobs: Sequence[float], gold: int) -> float:
    """Accuracy of log P(choice | prompt) - log P(choice | answer context), i.e. of P(c | x) / P(c | "Answer:")."""
    return float(pick([a - b for a, b in zip(logprobs, uncond_logprobs, strict=True)]) == gold)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """How answers are normalised before exact match (lm-evaluation-harness's exact_match options + strip).

    regexes_to_ignore are removed first (e.g. "," and r"\\$" for numbers), then case, punctuation and
    surrounding whitespace as configured.
    """

    strip: bool = True
    ignore_case: bool = False
    ignore_punctuation: bool = False
    regexes_to_ignore: tuple[str, ...] = ()

    def __call__(self, text: str) -> str:
        for pattern in self.regexes_to_ignore:
            text = re.sub(pattern, "", text)
        if self.ignore_case:
            text = text.lower()
        if self.ignore_punctuation:
            text = text.translate(str.maketrans("", "", string.punctuation))
        return text.strip() if self.strip else text


def exact_match(prediction: str, reference: str, normalization: Normalization = Normalization()) -> float:
    return float(normalization(prediction) == normalization(reference))


def extract_answer(text: str, pattern: str = "", fallback: str = "") -> str:
    """The answer inside a generation.

    pattern: a regex whose first group (or whole match) is the answer; its first match wins, as in
    GSM8K's "#### N". When it does not match, fallback "last_number" takes the last number in the text
    (lm-evaluation-harness's flexible extraction, for chains of thought that end without the marker);
    otherwise the text is returned unchanged when pattern is empty, or "" (no answer) when it is not.
    """
    if pattern:
        m = re.search(pattern, text)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    if fallback == "last_number":
        numbers = re.findall(r"-?[$0-9.,]*[0-9]", text)
        return numbers[-1] if numbers else ""
    return "" if pattern else text


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of a mean: sample standard deviation (ddof 1) / sqrt(n); 0 for fewer than 2 values."""
    x = np.asarray(values, np.float64)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def perplexity(logprobs: Sequence[float]) -> tuple[float, float]:
    """exp(-mean log-likelihood) over examples (LAMBADA's target-word perplexity) and its standard error by the
    delta method: se(exp(-m)) = exp(-m) se(m)."""
    x = np.asarray(logprobs, np.float64)
    ppl = float(np.exp(-x.mean()))
    return ppl, ppl * mean_stderr(x)


def summarize(per_example: dict[str, list[float]]) -> dict[str, float]:
    """{metric: mean, metric_stderr: standard error} of per-example metric values."""
    out: dict[str, float] = {}
    for name, values in per_example.items():
        out[name] = float(np.mean(values)) if len(values) else float("nan")
        out[f"{name}_stderr"] = mean_stderr(values)
    return out


GRADER_TEMPLATE = (
    "Question: {prompt}\nReference answer: {reference}\nProposed answer: {answer}\n"
    "Is the proposed answer correct? Answer:"
)


class ModelGrader:
    """A model-graded metric (as in the GPT-4 report's evaluations): another language model judges an answer.

    The grader reads GRADER_TEMPLATE (or `template`, with fields prompt, answer, reference) and the score is
    the probability it gives to the first of `verdicts` ("Yes") against the others, renormalised over the
    verdicts: a soft correctness in [0, 1]. `lm` is anything with gptx.eval.requests.LM's `loglikelihood`.
    """

    def __init__(self, lm: Any, template: str = GRADER_TEMPLATE, verdicts: tuple[str, ...] = (" Yes", " No")):
        self.lm, self.template, self.verdicts = lm, template, verdicts

    def grade_many(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        """Scores of (prompt, answer, reference) triples, in one batch of requests."""
        prompts = [self.template.format(prompt=p, answer=a, reference=r) for p, a, r in items]
        scores = self.lm.loglikelihood([(p, v) for p in prompts for v in self.verdicts])
        k = len(self.verdicts)
        out = []
        for i in range(len(prompts)):
            lps = np.asarray([s.logprob for s in scores[i * k : (i + 1) * k]], np.float64)
            p = np.exp(lps - lps.max())
            out.append(float(p[0] / p.sum()))
        return out

    def __call__(self, prompt: str, answer: str, reference: str) -> float:
        return self.grade_many([(prompt, answer, reference)])[0]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c pass (Chen et al. 2021, "Evaluating Large Language
    Models Trained on Code", Fig. 3): 1 - C(n-c, k) / C(n, k), the chance that a draw of k of the n samples
    holds a passing one. Computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the huge
    binomials (the paper's numerically stable form)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))
