"""The capability task's generated training data: the evaluated problems never occur in it, the corpus mix gives it
the configured share of the bytes, the shipped task file is the generator's and its tests judge answers."""

import json
import pathlib
import re

import numpy as np
import pytest
from conftest import tiny_config

from gptx.data import loader, sources
from gptx.errors import ConfigError
from gptx.eval import code, sandbox, taskfile
from gptx.scaling import capability_data as cd

FAMILY_SIZE = {"max_digit": 10**4, "arithmetic": 100 * 100 + 100 * 101 // 2}  # 4 digits; a+b, a-b (a >= b) < 100
ENUMERATED = tuple(FAMILY_SIZE)  # the families small enough to train on every problem (graded: test_scaling_graded)


def _solve(question: str) -> int:
    """The answer of a question, computed independently of the generator."""
    words = question.split()
    if words[1] == "of":  # max_digit and graded: OP of DIGITS
        d = [int(w) for w in words[2:]]
        return {"max": max(d), "min": min(d), "first": d[0], "last": d[-1], "sum": sum(d)}[words[0]]
    a, op, b = words
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def _evaluated(family: str) -> list[dict]:
    with open(cd.builtin_path(family)) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("family", cd.FAMILIES)
def test_shipped_task_file_is_the_generators_and_its_tests_judge_answers(family):
    assert pathlib.Path(cd.builtin_path(family)).read_text() == cd.task_file_text(cd.eval_problems(family, cd.N_EVAL))
    task = taskfile.get(cd.TASK_FILE[family])
    assert task.kind == "code" and task.program_format == code.HUMANEVAL and task.temperature == 1.0
    docs = _evaluated(family)[:4]
    right = [code.program("humaneval", d, d["canonical_solution"]) for d in docs]
    wrong = [code.program("humaneval", d, str(int(d["canonical_solution"]) + 1)) for d in docs]
    results = sandbox.run_programs(right + wrong, workers=2)
    assert [r.status for r in results] == [sandbox.PASSED] * 4 + [sandbox.FAILED] * 4
    for d in _evaluated(family):
        assert int(d["canonical_solution"]) == _solve(re.search(r"# (.+)\n", d["prompt"])[1])


@pytest.mark.parametrize("family", ENUMERATED)
def test_training_data_holds_every_other_problem_and_no_evaluated_one(family):
    """A brute-force scan of the generated text: no evaluated question appears in it, every other does, once."""
    evaluated = cd.read_problems(cd.builtin_path(family))
    text = "\n\n".join(cd.training_documents(cd.training_problems(family, evaluated, seed=3)))
    questions = re.findall(r"# (.+)\n    return (-?\d+)", text)
    seen = [q for q, _ in questions]
    assert len(seen) == len(set(seen)) == FAMILY_SIZE[family] - len(_evaluated(family))
    for d in _evaluated(family):
        question = re.search(r"# (.+)\n", d["prompt"])[1]
        assert f"# {question}\n" not in text
    assert all(int(answer) == _solve(q) for q, answer in questions)  # and every training answer is right


def test_training_problems_are_a_seeded_shuffle():
    first = cd.training_problems("max_digit", [], seed=0)
    assert first == cd.training_problems("max_digit", [], seed=0) != cd.training_problems("max_digit", [], seed=1)


def _mixed(tmp_path, weight):
    cfg = tiny_config()
    cfg.scaling.update(task_data="max_digit", task_data_weight=weight)
    out = cd.mixed_corpus(cfg, str(tmp_path))
    return cfg, out


@pytest.mark.parametrize("weight", [0.1, 0.4])
def test_corpus_mix_gives_the_task_data_its_weight(tmp_path, weight):
    """The task data's share of the mixed corpus's bytes is the weight within one document; in the training split
    the loader takes (a random subset of the shuffled mix) it is the weight within 4 standard errors."""
    cfg, out = _mixed(tmp_path, weight)
    docs = list(sources.read_documents(out.data.corpus, out.data.doc_separator))
    base = list(sources.read_documents(cfg.data.corpus, cfg.data.doc_separator))
    size = np.array([len(d.encode()) for d in docs], np.float64)
    task = np.array([d.startswith("def answer():") for d in docs])
    share = size[task].sum() / size.sum()
    assert abs(share - weight) < size.max() / size.sum()
    assert sorted(d for d, t in zip(docs, task, strict=True) if not t) == sorted(base)  # the corpus, once
    train, _ = loader.split_train_val(docs, out.data.val_fraction)
    n, total = len(train), len(docs)
    tr_size, tr_task = size[:n], task[:n]
    got = tr_size[tr_task].sum() / tr_size.sum()
    # ratio estimator of a simple random sample of n of the N documents
    resid = size * (task - share)
    se = np.sqrt((1 - n / total) / n * resid.var(ddof=1)) / size.mean()
    assert abs(got - share) < 4 * se
    assert json.loads((tmp_path / cd.REPORT).read_text())["sources"][1]["share"] == pytest.approx(weight)
    assert cd.mixed_corpus(cfg, str(tmp_path)).data.corpus == out.data.corpus  # the same settings: reused
    cfg.scaling.task_data_weight = weight + 0.1
    with pytest.raises(ConfigError, match="use a new workdir"):
        cd.mixed_corpus(cfg, str(tmp_path))


def test_task_data_settings_are_checked(tmp_path):
    cfg = tiny_config()
    assert cd.mixed_corpus(cfg, str(tmp_path)) is cfg  # "" mixes nothing
    cfg.scaling.update(task_data="max_digit", task_data_weight=1.0)
    with pytest.raises(ConfigError, match="task_data_weight"):
        cd.mixed_corpus(cfg, str(tmp_path))
    cfg.scaling.update(task_data="poetry", task_data_weight=0.2)
    with pytest.raises(ConfigError, match="task_data='poetry'"):
        cd.mixed_corpus(cfg, str(tmp_path))
    cfg.scaling.task_data = "max_digit"
    cfg.data.corpus = str(tmp_path)  # a directory: a prepared corpus
    with pytest.raises(ConfigError, match="data_prep.sources"):
        cd.mixed_corpus(cfg, str(tmp_path))


def test_source_file_for_the_data_pipeline(tmp_path):
    n = cd.write_source(str(tmp_path / "max.jsonl"), "max_digit")
    rows = [json.loads(line) for line in (tmp_path / "max.jsonl").read_text().splitlines()]
    assert len(rows) == n == -(-(FAMILY_SIZE["max_digit"] - cd.N_EVAL) // cd.PER_DOC)
    assert all(r["text"].count("def answer():") <= cd.PER_DOC for r in rows)


@pytest.mark.slow
def test_capability_sweep_trains_on_the_mix_and_evaluates_every_run_mid_and_end(tmp_path):
    """configs/scaling.py:capability_tiny for real: the runs train on the mixed corpus, each is evaluated on the
    held-out problems in the sandbox at half its steps and at its end, and the prediction (loss and capability)
    was frozen before the held-out run's first checkpoint."""
    import time

    from conftest import load_config

    from gptx import scaling

    cfg = load_config("scaling", "capability_tiny")
    cfg.scaling.eval_at = (0.5,)
    results = scaling.sweep(cfg, str(tmp_path))
    assert json.loads((tmp_path / cd.REPORT).read_text())["family"] == "max_digit"
    for name, run_cfg in scaling.schedule(cfg):
        row = results[name]
        problems = row["eval"]["max_digit_code"]["problems"]
        assert problems["n"] == [2] * 6 and problems["doc"] == list(range(6))
        assert [e["step"] for e in row["eval_steps"]] == [round(run_cfg.train.steps / 2)]
        assert row["eval_steps"][0]["eval"]["max_digit_code"]["problems"]["n"] == [2] * 6
    pred = json.loads((tmp_path / "prediction.json").read_text())
    assert pred["capability"]["task"] == "max_digit_code"
    held_out = pred["targets"][0]["name"]
    made_at = time.mktime(time.strptime(pred["made_at"], "%Y-%m-%dT%H:%M:%S"))
    first_ckpt = min(p.stat().st_mtime for p in (tmp_path / "runs" / held_out / "checkpoints").iterdir())
    assert made_at <= first_ckpt
