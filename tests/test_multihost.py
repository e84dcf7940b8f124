"""Multi-process training on one machine: jax.distributed over 127.0.0.1 with gloo CPU collectives."""

import json
import os
import socket
import subprocess

from conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, steps: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    return subprocess.run(
        ["bash", "launch/local.sh", "--processes", "2", "--port", str(free_port()), "--", "train",
         "--config=configs/demo.py", f"--workdir={workdir}", f"--config.train.steps={steps}",
         "--config.train.decay_steps=8", "--config.train.ckpt_every=4", "--config.train.eval_every=4",
         "--config.train.log_every=2", "--config.train.progress=False", "--config.model.n_layer=1",
         "--config.model.block_size=64", "--config.train.batch_size=8"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_two_processes_train_checkpoint_and_resume_together(tmp_path):
    out = launch(tmp_path, 4)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("trained to step 4") == 1  # only process 0 reports
    # One checkpoint holding both processes' data-iterator positions.
    data_files = sorted(os.listdir(tmp_path / "checkpoints" / "4" / "data"))
    assert len([f for f in data_files if "process_" in f]) == 2, data_files

    out = launch(tmp_path, 8)  # both processes agree on the step to resume from
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [2, 4, 6, 8]  # written once per log step, by process 0 only; resumed at 4
    assert "restoring checkpoint at step 4" in out.stderr
