"""BLEU and chrF are sacrebleu's corpus-level scores, not means of sentence scores: the harness's aggregate equals
sacrebleu's own corpus_bleu / corpus_chrf on a hand-made set, and both equal their closed forms (Papineni et al.
2002: brevity penalty times the geometric mean of corpus n-gram precisions; Popović 2015: the F-beta of the
character n-gram precision and recall averaged over orders), computed here by brute force."""

import collections
import math
import sys

import pytest

from gptx.eval import corpus_metrics, harness, taskfile
from gptx.eval import tasks as T

sacrebleu = pytest.importorskip("sacrebleu", reason="sacrebleu comes with the lm_eval extra")

# (hypothesis, reference): lower-case words without punctuation, so 13a tokenisation is a whitespace split
PAIRS = [
    ("the cat sat on the mat", "the cat sat on a mat"),
    ("a quick brown fox jumps over the dog", "the quick brown fox jumped over the lazy dog"),
    ("it is raining cats and dogs today", "it is raining cats and dogs"),
    ("hello there my old friend", "hello my good old friend"),
]


def ngrams(tokens, n):
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def brute_force_bleu(pairs) -> float:
    """100 * BP * exp(mean_n log p_n), p_n the clipped n-gram matches over the corpus / hypothesis n-grams."""
    logs = []
    for n in range(1, 5):
        match = total = 0
        for hyp, ref in pairs:
            h, r = ngrams(hyp.split(), n), ngrams(ref.split(), n)
            match += sum(min(c, r[g]) for g, c in h.items())
            total += sum(h.values())
        logs.append(math.log(match / total))
    c = sum(len(h.split()) for h, _ in pairs)
    r = sum(len(ref.split()) for _, ref in pairs)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(sum(logs) / 4)


def brute_force_chrf(pairs, order: int = 6, beta: float = 2.0) -> float:
    """chrF: character n-grams without spaces, precision and recall from corpus counts per order, averaged over
    the orders, then F-beta."""
    precisions, recalls = [], []
    for n in range(1, order + 1):
        match = n_hyp = n_ref = 0
        for hyp, ref in pairs:
            h, r = ngrams(list(hyp.replace(" ", "")), n), ngrams(list(ref.replace(" ", "")), n)
            match += sum((h & r).values())
            n_hyp, n_ref = n_hyp + sum(h.values()), n_ref + sum(r.values())
        precisions.append(match / n_hyp)
        recalls.append(match / n_ref)
    p, r = sum(precisions) / order, sum(recalls) / order
    return 100 * (1 + beta**2) * p * r / (beta**2 * p + r)


def test_bleu_and_chrf_equal_their_closed_forms_and_sacrebleus_corpus_scores():
    hyps, refs = [h for h, _ in PAIRS], [r for _, r in PAIRS]
    bleu = corpus_metrics.corpus_score("bleu", hyps, refs)
    chrf = corpus_metrics.corpus_score("chrf", hyps, refs)
    assert bleu == pytest.approx(brute_force_bleu(PAIRS), rel=1e-9)
    assert chrf == pytest.approx(brute_force_chrf(PAIRS), rel=1e-9)
    assert bleu == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    # Corpus-level, not the mean of sentence scores (which differ here).
    mean_sentence = sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in PAIRS) / len(PAIRS)
    assert abs(bleu - mean_sentence) > 1.0


def test_identical_answers_score_100_and_disjoint_ones_0():
    refs = [r for _, r in PAIRS]
    for name in corpus_metrics.NAMES:
        assert corpus_metrics.corpus_score(name, refs, refs) == pytest.approx(100.0)
        assert corpus_metrics.corpus_score(name, ["VVV WWW"] * len(refs), refs) == pytest.approx(0.0, abs=1e-6)


class Echo:
    """An LM stand-in whose generation for a prompt is a scripted hypothesis."""

    max_len = 64

    def count_tokens(self, text):
        return len(text.split())

    def __init__(self, answers):
        self.answers = answers

    def generate_until(self, requests, max_new_tokens, **kw):
        return [self.answers[ctx] for ctx, _ in requests]


def test_a_task_file_asks_for_bleu_and_chrf_and_gets_the_corpus_scores(tmp_path):
    (tmp_path / "mt.jsonl").write_text("".join(f'{{"src": "s{i}", "ref": "{r}"}}\n' for i, (_, r) in enumerate(PAIRS)))
    (tmp_path / "mt.yaml").write_text(
        "task: mt\noutput_type: generate_until\ntest: mt.jsonl\ndoc_to_text: src\ndoc_to_target: ref\n"
        "metric_list: [bleu, chrf]\ngeneration_kwargs: {until: ['\\n']}\n"
    )
    (task,) = taskfile.resolve(str(tmp_path / "mt.yaml"))
    data = harness.load_task(task, "")
    lm = Echo({f"s{i}": h for i, (h, _) in enumerate(PAIRS)})
    rows: list[dict] = []
    res = harness.evaluate_task(lm, data, [0], per_example=rows)[0]
    hyps, refs = [h for h, _ in PAIRS], [r for _, r in PAIRS]
    assert res["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert res["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert res["bleu_stderr"] > 0 and res["n"] == len(PAIRS)
    assert [(r["answer"], r["reference"]) for r in rows] == PAIRS  # what the corpus score was computed on
    assert "bleu" in harness.format_table({"mt": {0: res}})


def test_a_missing_sacrebleu_is_a_clear_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu now raises ImportError
    with pytest.raises(ImportError, match=r"sacrebleu.*\.\[lm_eval\]"):
        corpus_metrics.corpus_score("bleu", ["a"], ["a"])
    with pytest.raises(ValueError, match="unknown corpus metric 'ter'"):
        corpus_metrics.scorer("ter")
    assert "bleu" in T.KIND_METRICS[T.GENERATE]
