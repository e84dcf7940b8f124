"""Code tasks score functional correctness: HumanEval- and MBPP-format problems with their reference solutions
score pass@1 = 1.0, with the bodies replaced by `pass` 0.0, and a mix of right and wrong samples scores the
unbiased pass@k of its counts; n samples per prompt come out of the KV-cache decoder batched, independent of
each other at a temperature and identical when greedy; a random-weight model runs end to end through `eval`."""

import json

import jax
import numpy as np
import pytest
from conftest import load_config
from test_config import run_cli
from test_eval_command import OVERRIDES, TINY, tiny_workdir

from gptx import mesh as mesh_lib
from gptx.eval import code, harness, sandbox, taskfile
from gptx.eval import tasks as T
from gptx.eval.metrics import pass_at_k
from gptx.eval.requests import LM
from gptx.models import GPT, GPTConfig

SETTINGS = code.Settings(limits=sandbox.Limits(timeout_s=5.0, cpu_s=5, memory_mb=512), workers=2)


def problems(name: str) -> tuple[T.Task, list[dict]]:
    task = taskfile.get(name)
    return task, [d for _, d in harness.load_task(task, "").docs]


def stub(fmt: str, doc: dict) -> str:
    """The reference solution with its body replaced by `pass` (HumanEval) or a function returning None (MBPP)."""
    if fmt == code.HUMANEVAL:
        return "    pass\n"
    return doc["code"].split(":\n")[0] + ":\n    pass\n"


@pytest.mark.parametrize("name", ["humaneval_mini", "mbpp_mini"])
def test_reference_solutions_pass_and_stubs_fail(name):
    task, docs = problems(name)
    fmt = task.program_format
    right, _ = code.score_samples(fmt, docs, [[code.reference_solution(fmt, d)] for d in docs], [1], SETTINGS)
    wrong, runs = code.score_samples(fmt, docs, [[stub(fmt, d)] for d in docs], [1], SETTINGS)
    assert right["pass@1"] == [1.0] * len(docs)
    assert wrong["pass@1"] == [0.0] * len(docs)
    assert {r[0].status for r in runs} == {sandbox.FAILED}  # the stubs run, and their asserts fail


class ScriptedLM:
    """An LM stand-in whose every sample for a prompt is the given function of its doc (the reference solution,
    or a `pass` body): the task file and the harness are under test, not the model."""

    max_len = 4096

    def __init__(self, completion):
        self.completion, self.calls = completion, []

    def count_tokens(self, text):
        return len(text)

    def generate_until(self, requests, max_new_tokens, **kw):
        self.calls.append((len(requests), kw))
        return [self.completion[ctx] for ctx, _ in requests]


def test_a_humaneval_format_task_file_scores_pass_at_1_of_1_for_canonical_solutions_and_0_for_pass(tmp_path):
    """A user's HumanEval-format file (gzipped, as HumanEval.jsonl.gz ships) named by a task file alone: through
    the harness, samples equal to the canonical solutions score pass@1 = 1.0, with the bodies `pass` 0.0."""
    import gzip

    _, docs = problems("humaneval_mini")
    with gzip.open(tmp_path / "HumanEval.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "he.yaml").write_text(
        "task: he\nkind: code\ntest: HumanEval.jsonl.gz\ndoc_to_text: prompt\ntarget_delimiter: ''\n"
        "code: {format: humaneval, samples: 2, pass_k: [1, 2]}\n"
    )
    (task,) = taskfile.resolve(str(tmp_path / "he.yaml"))
    data = harness.load_task(task, "")
    assert len(data.docs) == len(docs) and set(data.malformed.values()) == {0}
    canonical = ScriptedLM({d["prompt"]: d["canonical_solution"] for d in docs})
    stubbed = ScriptedLM({d["prompt"]: "    pass\n" for d in docs})
    right = harness.evaluate_task(canonical, data, [0], code_settings=SETTINGS)[0]
    wrong = harness.evaluate_task(stubbed, data, [0], code_settings=SETTINGS)[0]
    assert (right["pass@1"], right["pass@2"]) == (1.0, 1.0) and right["statuses"][sandbox.PASSED] == 2 * len(docs)
    assert (wrong["pass@1"], wrong["pass@2"]) == (0.0, 0.0) and wrong["statuses"][sandbox.FAILED] == 2 * len(docs)
    assert canonical.calls[0][0] == 2 * len(docs)  # n samples per problem, in one call


def test_pass_at_k_of_mixed_samples_is_the_unbiased_estimate_of_their_counts():
    task, docs = problems("humaneval_mini")
    fmt, n = task.program_format, 4
    hang = "    while True:\n        pass\n"
    passing = [0, 1, 2, 4, 3]  # doc i gets this many reference solutions among its n samples
    samples = [
        [code.reference_solution(fmt, d)] * c + [stub(fmt, d), "    return None\n", hang, "    1/0\n"][: n - c]
        for d, c in zip(docs, passing, strict=True)
    ]
    limits = sandbox.Limits(timeout_s=1.5, cpu_s=2, memory_mb=256)
    per, runs = code.score_samples(fmt, docs, samples, [1, 2, 4, 8], code.Settings(limits=limits, workers=2))
    assert sorted(per) == ["pass@1", "pass@2", "pass@4"]  # k > n cannot be estimated
    for k in (1, 2, 4):
        assert per[f"pass@{k}"] == pytest.approx([pass_at_k(n, c, k) for c in passing])
    statuses = [r.status for r in runs[0]]  # no passing sample: stub fails, None fails, hang times out, 1/0 errs
    assert statuses == [sandbox.FAILED, sandbox.FAILED, sandbox.TIMEOUT, sandbox.ERROR]


def test_a_code_task_needs_a_known_format_and_pass_k():
    with pytest.raises(ValueError, match="program_format"):
        T.Task("x", T.CODE, "builtin:humaneval_mini.jsonl", "jsonl", program_format="nope")
    with pytest.raises(ValueError, match="do not apply"):
        T.Task("x", T.CODE, "builtin:humaneval_mini.jsonl", "jsonl", program_format="humaneval", metrics=("pass@3",))
    assert taskfile.get("humaneval_mini").active_metrics == ("pass@1",)


class ByteTokenizer:
    """UTF-8 bytes as tokens (BOS 256, EOS 257): a tokenizer that costs nothing to build."""

    bos_id, eos_id, pad_id, add_bos = 256, 257, 0, True

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def tiny_lm():
    """A random-weight 2-layer model over bytes."""
    model = GPT(GPTConfig(**{**TINY, "block_size": 64, "dropout": 0.0, "attn_dropout": 0.0}))
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    rng = np.random.default_rng(0)  # numpy weights: no init program to trace and compile
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), mesh_lib.strip_annotations(boxed))
    return LM(model, params, ByteTokenizer(), batch_size=8)


@pytest.mark.slow  # about a minute of compiling on 2 cores
def test_n_samples_are_independent_at_a_temperature_and_equal_when_greedy(tiny_lm):
    requests = [("def add(a, b):", ())] * 4 + [("The king", ())] * 4
    sampled = tiny_lm.generate_until(requests, 8, temperature=1.0, seed=3)
    assert len(set(sampled[:4])) > 1 and len(set(sampled[4:])) > 1  # each copy draws its own tokens
    greedy = tiny_lm.generate_until(requests, 8)
    assert len(set(greedy[:4])) == 1 and len(set(greedy[4:])) == 1
    nucleus = tiny_lm.generate_until(requests, 8, temperature=1.0, top_p=1e-6, seed=3)
    assert nucleus == greedy  # a vanishing nucleus keeps the argmax only


def test_score_code_batches_n_samples_through_the_model(tiny_lm):
    task, docs = problems("humaneval_mini")
    data = harness.TaskData(task, list(enumerate(docs))[:2], docs, True, {})
    settings = code.Settings(samples=3, temperature=0.8, limits=SETTINGS.limits, workers=2)
    res = harness.evaluate_task(tiny_lm, data, [0], max_new_tokens=8, code_settings=settings)[0]
    assert res["n"] == 2 and res["pass@1"] == 0.0  # a random model writes no working code
    assert sum(res["statuses"].values()) == 6  # 2 problems x 3 samples, each run and classified


@pytest.mark.slow
def test_eval_command_runs_a_code_task_file_end_to_end(tmp_path):
    """A random-weight model through `eval` on a 2-problem HumanEval-format file named by a task file."""
    cfg = load_config("eval")
    cfg.model.update(TINY)
    tiny_workdir(tmp_path, cfg)
    _, docs = problems("humaneval_mini")
    (tmp_path / "two.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[:2]))
    (tmp_path / "two.yaml").write_text(
        "task: two\nkind: code\ntest: two.jsonl\ndoc_to_text: prompt\ntarget_delimiter: ''\n"
        'generation_kwargs: {until: ["\\ndef"], max_gen_toks: 16}\ncode: {format: humaneval, pass_k: [1, 2]}\n'
    )
    out = run_cli(
        "eval", "--config=configs/eval.py", f"--workdir={tmp_path}", *OVERRIDES,
        f"--config.eval.tasks={tmp_path / 'two.yaml'}", "--config.eval.shots=0",
        "--config.eval.samples=2", "--config.eval.temperature=0.8",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "eval_results.json").read_text())["results"]["two"]["0"]
    assert res["n"] == 2 and res["pass@1"] == res["pass@2"] == 0.0 and sum(res["statuses"].values()) == 4
    rows = [json.loads(line) for line in (tmp_path / "eval_results.examples.jsonl").read_text().splitlines()]
    assert [len(r["samples"]) for r in rows] == [2, 2] and all(len(r["statuses"]) == 2 for r in rows)
    assert "pass@1" in out.stdout
