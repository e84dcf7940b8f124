"""Text-overlap metrics of a generation against its reference: SQuAD's token F1 and ROUGE.

`f1` is the SQuAD v1.1 evaluation script's: both texts lower-cased, punctuation and the articles a/an/the removed,
whitespace split; F1 of the bag-of-tokens overlap. `rouge1`, `rouge2`, `rougeL` are Lin (2004)'s F-measures
through Google's `rouge-score` package (with its stemmer off, as lm-evaluation-harness calls it); it is imported
only when a task asks for them (`pip install rouge-score`; lm-evaluation-harness brings it).
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable

ROUGE = ("rouge1", "rouge2", "rougeL")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
    """SQuAD's normalize_answer: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 in [0, 1]; two empty answers agree (1.0), one empty one does not (0.0)."""
    pred, ref = squad_normalize(prediction).split(), squad_normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge(kind: str) -> Callable[[str, str], float]:
    """The F-measure of ROUGE-`kind` ("rouge1", "rouge2", "rougeL") as a (prediction, reference) function."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ImportError(f"the {kind} metric needs the rouge-score package: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=False)
    return lambda prediction, reference: float(scorer.score(reference, prediction)[kind].fmeasure)


def metric(name: str) -> Callable[[str, str], float]:
    """The (prediction, reference) -> score function of an overlap metric name."""
    if name == "f1":
        return token_f1
    if name in ROUGE:
        return rouge(name)
    raise ValueError(f"unknown overlap metric {name!r}: expected f1 or one of {', '.join(ROUGE)}")


NAMES = ("f1", *ROUGE)
