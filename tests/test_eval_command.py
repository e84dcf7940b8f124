"""`gptx.main eval` as a user runs it on a checkpoint workdir, its config, and the demo's fewshot stage."""

import json

import jax
import numpy as np
import pytest
from conftest import load_config, tiny_config
from test_config import run_cli

from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx.config import ConfigError
from gptx.data import sources
from gptx.data import tokenizer as tokenizer_lib
from gptx.eval import command
from gptx.interop import workdir as convert
from gptx.models import GPT, GPTConfig

TINY = dict(vocab_size=512, block_size=128, n_layer=2, n_head=2, d_model=32)
OVERRIDES = [f"--config.model.{k}={v}" for k, v in TINY.items()] + ["--config.tokenizer.vocab_size=512"]


def tiny_workdir(path, cfg) -> None:
    """A checkpoint of random weights and a tokenizer, laid out as `train` leaves a workdir."""
    model = GPT(GPTConfig.from_config(cfg.model))
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), mesh_lib.strip_annotations(boxed))
    mesh = mesh_lib.make_mesh(tiny_config().mesh, devices=jax.devices()[:1])
    convert.save_checkpoint(cfg, params, str(path), mesh)
    tokenizer_lib.train([sources.read_text("bundled:tinyshakespeare")[:200_000]], 512).save(path / "tokenizer.model")


def test_eval_command_prints_a_table_and_writes_json_per_task_and_shot(tmp_path):
    cfg = load_config("eval")
    cfg.model.update(TINY)
    tiny_workdir(tmp_path, cfg)
    out = run_cli(
        "eval", "--config=configs/eval.py", f"--workdir={tmp_path}", *OVERRIDES,
        "--config.eval.tasks=shakespeare_lastword,tinyshakespeare", "--config.eval.shots=0,2",
        "--config.eval.limit=6", "--config.eval.examples=1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "eval_results.json").read_text())
    lastword = results["results"]["shakespeare_lastword"]
    assert sorted(lastword) == ["0", "2"]  # one entry per shot count
    for shot in ("0", "2"):
        r = lastword[shot]
        assert r["n"] == 6 and 0.0 <= r["acc"] <= 1.0 and r["acc_stderr"] >= 0.0 and "acc_norm" in r
    assert lastword["2"]["mean_shots"] == 2.0 and lastword["2"]["examples"][0]["prompt"].count(":\n") == 3
    ppl = results["results"]["tinyshakespeare"]
    assert list(ppl) == ["0"] and ppl["0"]["bits_per_byte"] > 0  # perplexity tasks run zero-shot only
    assert list(results["tasks"]["shakespeare_lastword"]["malformed"].values()) == [0]
    header = next(line for line in out.stdout.splitlines() if line.startswith("task"))
    assert header.split() == ["task", "shots", "used", "metric", "value", "stderr", "n"]
    assert f"results -> {tmp_path}/eval_results.json" in out.stdout
    # What the numbers were measured on, and a record per doc and shot count beside the summary.
    run = results["run"]
    assert run["checkpoint_step"] is not None and run["gptx_version"] and results["config"]["eval"]["limit"] == 6
    assert run["tokenizer"]["path"] == str(tmp_path / "tokenizer.model") and run["tokenizer"]["kind"]
    rows = [json.loads(line) for line in (tmp_path / "eval_results.examples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 2 + 6  # shakespeare_lastword at 0 and 2 shots, tinyshakespeare at 0
    pick = [r for r in rows if r["task"] == "shakespeare_lastword" and r["shots"] == 2]
    assert all(len(r["choices"]) == len(r["loglikelihoods"]) == 4 and r["shots_used"] == 2 for r in pick)
    assert np.mean([r["metrics"]["acc"] for r in pick]) == pytest.approx(lastword["2"]["acc"])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("shots", "0,x", "must be comma-separated integers"),
        ("shots", "-1", "shot counts >= 0"),
        ("batch_size", 0, "config.eval.batch_size=0 must be positive"),
        ("rolling_stride", 4096, "exceeds the context"),
        ("tasks", "lambada,nope", r"config.eval.tasks: unknown eval task 'nope'"),
        ("context_prefix", "bos_always", "config.eval.context_prefix='bos_always' must be one of auto, bos, eos, none"),
    ],
)
def test_eval_config_errors_name_the_key(key, value, message):
    cfg = load_config("eval")
    cfg.eval[key] = value
    with pytest.raises(ConfigError, match=message):
        command.validate_eval(cfg)


def test_eval_configs_are_valid_for_the_shipped_models():
    for arg in ("demo", "gpt2:124m", "gpt3:350m"):
        cfg = load_config("eval", arg)
        config_lib.validate(cfg)
        command.validate_eval(cfg)
    assert load_config("eval", "gpt3:350m").model.n_layer == 24


@pytest.mark.slow
def test_demo_fewshot_stage_writes_the_accuracy_vs_demonstrations_plot(tmp_path):
    cfg = tiny_config(**TINY)
    cfg.mesh.update(data=-1)  # all 8 test devices: the stage's batches of 32 split over them
    tiny_workdir(tmp_path / "pretrain", cfg)
    (tmp_path / "pretrain" / "tokenizer.model").rename(tmp_path / "tokenizer.model")  # the demo's layout
    from gptx import demo

    demo.run(cfg, str(tmp_path), ["fewshot"])
    report = (tmp_path / "report.md").read_text()
    assert "In-context learning (GPT-3)" in report and "report/fewshot.png" in report
    assert (tmp_path / "report" / "fewshot.png").stat().st_size > 10_000
    results = json.loads((tmp_path / "fewshot.json").read_text())["results"]
    assert sorted(results, key=int) == ["0", "1", "2", "4"] and results["0"]["n"] == 200
