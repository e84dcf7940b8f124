"""The embedded default: `gptx.main demo` learns the bundled corpus and writes its report."""

import json
import time

import pytest
from test_config import run_cli


def test_demo_learns_far_below_the_unigram_entropy(tmp_path):
    # A quarter of the demo's steps at half its batch: the loss must already be a nat below the best
    # context-free model.
    out = run_cli(
        "demo",
        "--config=configs/demo.py",
        f"--workdir={tmp_path}",
        "--stages=tokenizer,pretrain,sample",
        "--config.train.steps=120",
        "--config.train.batch_size=16",
        "--config.train.eval_every=60",
        "--config.train.progress=False",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "pretrain" / "summary.json").read_text())
    assert summary["final_eval_loss"] < summary["unigram_entropy"] - 1.0, summary
    report = (tmp_path / "report.md").read_text()
    for heading in ("## 1. Tokenizer", "## 2. Pretraining", "## 3. Samples"):
        assert heading in report
    assert (tmp_path / "report" / "pretrain_loss.png").stat().st_size > 10_000
    assert (tmp_path / "tokenizer.model").exists() and (tmp_path / "pretrain" / "checkpoints" / "120").is_dir()
    assert "ROMEO:" in out.stdout  # samples are printed
    metrics = [json.loads(line) for line in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(metrics[-2]) | set(metrics[-1])
    assert list((tmp_path / "pretrain" / "tensorboard").iterdir())

    # Stages can be picked; the report keeps earlier stages' sections.
    out = run_cli("demo", "--config=configs/demo.py", f"--workdir={tmp_path}", "--stages=sample")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "## 2. Pretraining" in (tmp_path / "report.md").read_text()

    # `sample` continues a batch of prompts from the run's checkpoint.
    tokenizer = f"--config.data.tokenizer={tmp_path / 'tokenizer.model'}"
    args = ("sample", "--config=configs/demo.py", f"--checkpoint={tmp_path / 'pretrain'}", tokenizer)
    greedy = (
        "--prompt=ROMEO:",
        "--prompt=JULIET:\nO",
        "--config.sample.temperature=0",
        "--config.sample.max_new_tokens=24",
    )
    first = run_cli(*args, *greedy)
    assert first.returncode == 0, first.stderr[-3000:]
    romeo = first.stdout.split("--- 'ROMEO:'\nROMEO:")[1].split("--- ")[0]
    assert romeo.strip() and "--- 'JULIET:\\nO'\nJULIET:\nO" in first.stdout
    out = run_cli(*args)
    assert (
        out.returncode == 2
        and out.stderr.strip().splitlines()[-1] == "gptx: error: sample needs at least one --prompt=TEXT"
    )
    out = run_cli("demo", "--config=configs/demo.py", f"--workdir={tmp_path}", "--stages=fly")
    assert out.returncode == 2 and "unknown demo stage(s) in --stages: ['fly']" in out.stderr


def test_demo_scaling_stage_predicts_the_largest_run_before_training_it(tmp_path):
    out = run_cli("demo", "--config=configs/demo.py", f"--workdir={tmp_path}", "--stages=scaling",
                  "--config.scaling.n_sizes=4", "--config.scaling.d_model_min=8", "--config.scaling.d_model_max=40",
                  "--config.scaling.n_layer_max=1", "--config.scaling.tokens_per_param=0.001",
                  "--config.scaling.min_steps=6", "--config.scaling.bootstrap=20")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    pred = json.loads((tmp_path / "scaling" / "prediction.json").read_text())
    assert len(pred["fit_on"]) == 3 and len(pred["targets"]) == 1
    target = pred["targets"][0]
    assert target["measured"] is not None and "rel_error" in target
    # The prediction was frozen before the predicted run's first checkpoint existed.
    made_at = time.mktime(time.strptime(pred["made_at"], "%Y-%m-%dT%H:%M:%S"))
    first_ckpt = min(
        p.stat().st_mtime for p in (tmp_path / "scaling" / "runs" / target["name"] / "checkpoints").iterdir()
    )
    assert made_at <= first_ckpt
    report = (tmp_path / "report.md").read_text()
    assert "## 4. Predictable scaling" in report and (tmp_path / "report" / "scaling_prediction.png").exists()


@pytest.mark.slow
def test_demo_capability_stage_reports_the_frozen_prediction_against_the_measurement(tmp_path):
    out = run_cli("demo", "--config=configs/demo.py", f"--workdir={tmp_path}", "--stages=capability",
                  "--config.scaling.task_data=max_digit", "--config.scaling.eval_tasks=max_digit_code",
                  "--config.scaling.n_sizes=4", "--config.scaling.d_models=(8,16,24,48)",
                  "--config.scaling.n_layer_min=1", "--config.scaling.n_layer_max=1",
                  "--config.scaling.tokens_per_param=0.001", "--config.scaling.min_steps=6",
                  "--config.scaling.bootstrap=0", "--config.eval.samples=2", "--config.eval.limit=6")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    pred = json.loads((tmp_path / "capability" / "prediction.json").read_text())
    assert pred["capability"]["task"] == "max_digit_code" and len(pred["fit_on"]) == 3
    report = (tmp_path / "report.md").read_text()
    assert "## Capability prediction" in report and (tmp_path / "report" / "capability_prediction.png").exists()
