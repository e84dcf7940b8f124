"""Corpus-level generation metrics through sacrebleu: BLEU (Papineni et al., 2002) and chrF (Popović, 2015).

Both are defined over a whole test set, not as a mean of sentence scores: BLEU sums the clipped n-gram matches
and the hypothesis/reference lengths over all sentences before it takes the geometric mean of the n-gram
precisions and the brevity penalty; chrF sums the character n-gram statistics before its F-score. So the score
of a task is sacrebleu's `corpus_bleu` / `corpus_chrf` of all its (answer, reference) pairs, with sacrebleu's
defaults (13a tokenisation, 4-grams, exponential smoothing; character 6-grams, beta 2), on its 0-100 scale, as
lm-evaluation-harness's `bleu` and `chrf` metrics report them. The standard error is a seeded bootstrap over the
sentences (lm-evaluation-harness bootstraps these metrics too).

sacrebleu is imported only when a task asks for one of them; lm-evaluation-harness brings it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

NAMES = ("bleu", "chrf")
BOOTSTRAP_ITERS = 100


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise ImportError(
            "the bleu and chrf metrics need the sacrebleu package: pip install -e '.[lm_eval]' (lm-evaluation-harness "
            "brings it) or pip install sacrebleu"
        ) from None
    return sacrebleu


def scorer(name: str) -> Callable[[Sequence[str], Sequence[str]], float]:
    """(hypotheses, references) -> the corpus score of metric `name`, one reference per hypothesis."""
    if name not in NAMES:
        raise ValueError(f"unknown corpus metric {name!r}: expected one of {', '.join(NAMES)}")
    sb = _sacrebleu()
    corpus = sb.corpus_bleu if name == "bleu" else sb.corpus_chrf
    return lambda hyps, refs: float(corpus(list(hyps), [list(refs)]).score)


def corpus_score(name: str, hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU or chrF (0-100) of the hypotheses against their references."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return scorer(name)(hypotheses, references)


def bootstrap_stderr(
    name: str, hypotheses: Sequence[str], references: Sequence[str], iters: int = BOOTSTRAP_ITERS, seed: int = 0
) -> float:
    """Standard error of the corpus score: the standard deviation (ddof 1) of the scores of `iters` resamples of
    the sentences with replacement; 0 for fewer than 2 sentences."""
    n = len(hypotheses)
    if n < 2:
        return 0.0
    score = scorer(name)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(n, size=n) for _ in range(iters)]
    values = [score([hypotheses[i] for i in d], [references[i] for i in d]) for d in draws]
    return float(np.std(values, ddof=1))


def aggregate(name: str, pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """{name: corpus score, name_stderr: bootstrap standard error} of (hypothesis, reference) pairs."""
    hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
    if not pairs:
        return {name: float("nan"), f"{name}_stderr": 0.0}
    return {name: corpus_score(name, hyps, refs), f"{name}_stderr": bootstrap_stderr(name, hyps, refs)}
