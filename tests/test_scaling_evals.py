"""A sweep run's end-of-training evaluation: gptx.eval's harness and sandbox in-process, per-problem pass counts."""

import json
import pathlib

import pytest
from conftest import load_config

from gptx.config import ConfigError
from gptx.eval import command
from gptx.scaling import evals

BUILTIN = pathlib.Path(command.__file__).parent / "builtin"
PROBLEMS = [json.loads(line) for line in (BUILTIN / "humaneval_mini.jsonl").read_text().splitlines()]


class ScriptedLM:
    """Answers problem i's n samples with its reference solution exactly `passes[i]` times, else a failing body;
    everything else is what the harness needs of gptx.eval.requests.LM."""

    max_len = 1024

    def __init__(self, passes):
        self.passes = passes

    def count_tokens(self, text):
        return len(text) // 4

    def generate_until(self, requests, max_new_tokens, temperature=0.0, top_p=1.0, seed=0):
        seen = {}
        out = []
        for prompt, _ in requests:
            i = next(j for j, p in enumerate(PROBLEMS) if prompt.endswith(p["prompt"]))
            k = seen.get(i, 0)
            seen[i] = k + 1
            out.append(PROBLEMS[i]["canonical_solution"] if k < self.passes[i] else "    raise ValueError\n")
        return out


def _cfg():
    cfg = load_config("scaling")
    cfg.scaling.eval_tasks = "humaneval_mini"
    cfg.eval.update(samples=4, temperature=0.8, sandbox_workers=2)
    return cfg


def test_run_is_evaluated_in_process_with_per_problem_pass_counts(tmp_path, monkeypatch):
    passes = [0, 1, 2, 3, 4]
    monkeypatch.setattr(command, "load_lm", lambda cfg, run_dir: ScriptedLM(passes))
    entry = evals.evaluate_run(_cfg(), str(tmp_path))["humaneval_mini"]
    assert entry["kind"] == "code" and entry["n"] == 5
    assert entry["problems"] == {"doc": [0, 1, 2, 3, 4], "n": [4] * 5, "c": passes}
    assert entry["metrics"]["pass@1"] == pytest.approx(sum(c / 4 for c in passes) / 5)
    records = [json.loads(line) for line in (tmp_path / evals.EXAMPLES).read_text().splitlines()]
    assert [r["statuses"].count("passed") for r in records] == passes


def test_unknown_eval_task_fails_before_training():
    cfg = _cfg()
    cfg.scaling.eval_tasks = "no_such_task"
    with pytest.raises(ConfigError, match="config.eval.tasks"):
        evals.validate(cfg)


@pytest.mark.slow
def test_tiny_sweep_evaluates_every_run_and_fits_without_solved_problems(tmp_path):
    """The `:tiny` preset with a code task: real training, in-process evaluation in the sandbox, and a `scaling fit`
    that reports (not fails on) a capability no tiny model has."""
    from gptx import scaling

    cfg = load_config("scaling", "tiny")
    cfg.scaling.eval_tasks = "humaneval_mini"
    cfg.eval.update(samples=2, temperature=1.0, max_new_tokens=8, sandbox_workers=2)
    results = scaling.sweep(cfg, str(tmp_path))
    for row in results.values():
        problems = row["eval"]["humaneval_mini"]["problems"]
        assert problems["n"] == [2] * 5 and len(problems["c"]) == 5
        assert (tmp_path / "runs" / row["name"] / evals.EXAMPLES).exists()
    fit = scaling.run_command(cfg, str(tmp_path), "fit")["capability"]
    assert fit["task"] == "humaneval_mini" and (fit["law"] is None) == (fit["problems"] == 0)


def test_generation_tasks_count_one_greedy_sample_per_problem():
    records = [{"doc": 3, "metrics": {"exact_match": 1.0}}, {"doc": 7, "metrics": {"exact_match": 0.0}}]
    assert evals.problem_counts("generate", records) == {"doc": [3, 7], "n": [1, 1], "c": [1, 0]}
    assert evals.problem_counts("choice", records) is None
