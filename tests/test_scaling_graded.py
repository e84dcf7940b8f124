"""The graded capability task (gptx.scaling.graded_data): its evaluated problems cover every stratum of difficulty
equally, its generated training data never holds an evaluated question, and its unit tests pass the reference
solutions and fail wrong ones."""

import collections
import json
import re

import pytest
from conftest import tiny_config
from test_scaling_task_data import _solve  # the answers, computed independently of the generators

from gptx.data import sources
from gptx.eval import code, sandbox
from gptx.scaling import capability_data as cd
from gptx.scaling import graded_data as gd


def _evaluated() -> list[dict]:
    with open(cd.builtin_path("graded")) as f:
        return [json.loads(line) for line in f]


def test_evaluated_problems_cover_every_stratum_equally_and_are_distinct():
    problems = cd.eval_problems("graded")
    per = collections.Counter(gd.stratum(p.question) for p in problems)
    assert set(per) == set(gd.STRATA) and set(per.values()) == {cd.N_EVAL // len(gd.STRATA)}
    assert len({p.question for p in problems}) == len(problems)
    assert all(p.answer == _solve(p.question) for p in problems)
    assert cd.read_problems(cd.builtin_path("graded")) == problems  # the shipped file is the generator's


def test_unit_tests_pass_reference_solutions_and_fail_wrong_ones():
    """One problem of each stratum in the sandbox: the canonical answer passes; off by one, or the answer of
    another operation on the same digits (a model that copied the first digit instead of the largest), fails."""
    docs, seen = [], set()
    for d in _evaluated():
        s = gd.stratum(re.search(r"# (.+)\n", d["prompt"])[1])
        if s not in seen:
            seen.add(s)
            docs.append(d)
    right = [code.program("humaneval", d, d["canonical_solution"]) for d in docs]
    wrong = [code.program("humaneval", d, str(int(d["canonical_solution"]) + 1)) for d in docs]
    results = sandbox.run_programs(right + wrong, workers=2)
    assert [r.status for r in results] == [sandbox.PASSED] * len(docs) + [sandbox.FAILED] * len(docs)
    q = "max of 3 8 5"  # a plausible wrong answer: the first digit
    doc = cd.task_record(0, cd.Problem(q, gd.answer(q)))
    assert sandbox.run_programs([code.program("humaneval", doc, "3")], workers=1)[0].status == sandbox.FAILED


def test_training_data_never_holds_an_evaluated_question_and_its_answers_are_right():
    """A brute-force scan of the generated text; every stratum is trained on, about equally often."""
    evaluated = cd.read_problems(cd.builtin_path("graded"))
    problems = cd.training_problems("graded", evaluated, seed=3)
    assert len(problems) == gd.NUM_TRAIN
    text = "\n\n".join(cd.training_documents(problems))
    pairs = re.findall(r"# (.+)\n    return (-?\d+)", text)
    assert len(pairs) == gd.NUM_TRAIN and all(int(a) == _solve(q) for q, a in pairs)
    for p in evaluated:
        assert f"# {p.question}\n" not in text
    per = collections.Counter(gd.stratum(q) for q, _ in pairs)
    assert set(per) == set(gd.STRATA) and max(per.values()) - min(per.values()) <= 1
    assert cd.training_problems("graded", evaluated, seed=3) == problems != cd.training_problems("graded", [], 4)


def test_mixed_corpus_with_graded_data_holds_no_evaluated_question(tmp_path):
    cfg = tiny_config()
    cfg.scaling.update(task_data="graded", task_data_weight=0.3)
    out = cd.mixed_corpus(cfg, str(tmp_path))
    text = "\n\n".join(sources.read_documents(out.data.corpus, out.data.doc_separator))
    assert "# max of" in text and "# sum of" in text
    assert not any(f"# {p.question}\n" in text for p in cd.eval_problems("graded"))
    report = json.loads((tmp_path / cd.REPORT).read_text())
    assert report["family"] == "graded" and report["evaluated_problems"] == cd.N_EVAL
    assert 0 < report["training_problems"] <= gd.NUM_TRAIN


def test_the_family_is_sampled_not_enumerated():
    from gptx.errors import ConfigError

    with pytest.raises(ConfigError, match="sampled"):
        cd.all_problems("graded")
