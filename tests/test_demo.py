"""The embedded default: `gptx.main demo` learns the bundled corpus and writes its report."""

import json

from test_config import run_cli


def test_demo_learns_far_below_the_unigram_entropy(tmp_path):
    # A quarter of the demo's steps: the loss must already be a nat below the best context-free model.
    out = run_cli(
        "demo",
        "--config=configs/demo.py",
        f"--workdir={tmp_path}",
        "--config.train.steps=120",
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
    out = run_cli("demo", "--config=configs/demo.py", f"--workdir={tmp_path}", "--stages=fly")
    assert out.returncode == 2 and "unknown demo stage(s) in --stages: ['fly']" in out.stderr
