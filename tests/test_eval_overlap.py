"""Overlap metrics of generations: SQuAD token F1 and ROUGE against hand-computed values, and a generate task
that reports them."""

import pytest

from gptx.eval import harness, overlap
from gptx.eval import tasks as T


@pytest.mark.parametrize(
    "prediction, reference, want",
    [
        ("The cat sat.", "a cat sat down", 2 * 1.0 * (2 / 3) / (1.0 + 2 / 3)),  # [cat sat] vs [cat sat down]
        ("Paris", "paris!", 1.0),  # case, punctuation and articles do not count
        ("the", "an", 1.0),  # both normalise to nothing
        ("", "Paris", 0.0),
        ("red red blue", "red blue blue", 2 / 3),  # bags: red x1 + blue x1 in common of 3 and 3
        ("x y", "z", 0.0),
    ],
)
def test_token_f1_is_squads(prediction, reference, want):
    assert overlap.token_f1(prediction, reference) == pytest.approx(want)


def test_rouge_l_is_the_lcs_f_measure():
    pytest.importorskip("rouge_score", reason="rouge-score (brought by lm-eval in the test extra) not installed")
    # LCS("the cat sat on the mat", "the cat lay on the mat") = the cat on the mat: 5 of 6 and 6 tokens.
    got = overlap.metric("rougeL")("the cat sat on the mat", "the cat lay on the mat")
    assert got == pytest.approx(5 / 6)
    # ROUGE-2: bigrams of "a b c d" vs "a b x d": {ab} in common of 3 and 3.
    assert overlap.metric("rouge2")("a b c d", "a b x d") == pytest.approx(1 / 3)


class Echo:
    """An LM stand-in whose generation is the doc's scripted answer (the metrics are under test, not the model)."""

    def __init__(self, answers):
        self.answers = answers

    def generate_until(self, requests, max_new_tokens, **kw):
        return [self.answers[ctx] for ctx, _ in requests]


def test_a_generate_task_reports_the_overlap_metrics_it_asks_for():
    task = T.Task(
        "toy_qa", T.GENERATE, "unused", "jsonl", context="{q}", target="{a}", until=("\n",),
        metrics=("exact_match", "f1", "rougeL"),
    )  # fmt: skip
    docs = [{"q": "Q1", "a": "a cat sat down"}, {"q": "Q2", "a": "Paris"}]
    lm = Echo({"Q1": "The cat sat.", "Q2": "Paris"})
    out, details = harness.score_generate(task, lm, docs, [harness.Prompt("Q1", ()), harness.Prompt("Q2", ())], 8)
    assert out["exact_match"] == [0.0, 1.0]
    assert out["f1"] == pytest.approx([0.8, 1.0])
    assert len(out["rougeL"]) == 2 and out["rougeL"][1] == 1.0
    with pytest.raises(ValueError, match="meteor"):
        T.Task("bad", T.GENERATE, "unused", "jsonl", context="{q}", target="{a}", metrics=("meteor",))
