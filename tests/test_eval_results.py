"""Results a researcher can use: a record per doc and shot count (prompt, what was scored, its metrics) whose
metrics average to the summary, the demonstrations actually used as a named number, and one warning per task
when K demonstrations do not fit."""

import logging

import numpy as np
import pytest

from gptx.eval import harness
from gptx.eval import tasks as T
from gptx.eval.requests import Loglikelihood


class WordLM:
    """A stub LM: one token per word, a context of `max_len` tokens; log P(continuation) = -(its length in
    characters), so the shortest choice wins and scores are known by hand."""

    def __init__(self, max_len: int = 64):
        self.max_len = max_len

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    def loglikelihood(self, requests):
        return [Loglikelihood(-float(len(c)), len(c) < 3, 1) for _, c in requests]


def choice_data(n: int = 6) -> harness.TaskData:
    task = T.Task("pick", T.CHOICE, "unused", "jsonl", context="{q}", choices="choices", metrics=("acc", "acc_norm"))
    docs = [{"q": f"question {i} " + "word " * 5, "choices": ["aaaa", "b", "cc"], "label": i % 3} for i in range(n)]
    return harness.TaskData(task, list(enumerate(docs)), docs, True, {})


def test_per_example_records_hold_what_was_scored_and_average_to_the_summary():
    data = choice_data()
    rows: list[dict] = []
    res = harness.evaluate_task(WordLM(), data, [0, 2], per_example=rows)
    assert [(r["shots"], r["doc"]) for r in rows] == [(k, i) for k in (0, 2) for i in range(6)]
    first = rows[0]
    assert first["choices"] == ["aaaa", "b", "cc"] and first["loglikelihoods"] == [-5.0, -2.0, -3.0]  # " " + choice
    # acc_norm divides by the choice length: -5/4 > -3/2 > -2/1, so the long gold choice wins there
    assert first["gold"] == 0 and first["metrics"] == {"acc": 0.0, "acc_norm": 1.0}
    assert rows[1]["metrics"]["acc"] == 1.0  # gold 1 is the shortest choice
    for k in (0, 2):
        mine = [r for r in rows if r["shots"] == k]
        assert np.mean([r["metrics"]["acc"] for r in mine]) == pytest.approx(res[k]["acc"])
        assert all(r["shots_used"] == k for r in mine) and mine[0]["prompt"].count("question") == k + 1


def test_a_k_that_does_not_fit_is_counted_and_warned_about_once_per_task(caplog):
    data = choice_data()
    with caplog.at_level(logging.WARNING):
        res = harness.evaluate_task(WordLM(max_len=20), data, [0, 1, 4, 8])  # a prompt of 2+ demos is too long
    assert res[0]["fewer_shots"] == 0 and res[1] == {**res[1], "mean_shots": 1.0, "fewer_shots": 0}
    assert res[4]["fewer_shots"] == 6 and res[4]["mean_shots"] == 1.0
    warnings = [r for r in caplog.records if "pick" in r.getMessage()]
    assert len(warnings) == 1  # once for the task, naming every K that did not fit
    assert "K=4 used fewer for 6/6 docs (mean 1.00)" in warnings[0].getMessage() and "K=8" in warnings[0].getMessage()
    table = harness.format_table({"pick": res})
    assert any(line.split()[:3] == ["pick", "4", "1.00"] for line in table.splitlines())  # shots 4, used 1
