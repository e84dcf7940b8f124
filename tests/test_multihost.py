"""Multi-process training on one machine: jax.distributed over 127.0.0.1 with gloo CPU collectives."""

import json
import os
import socket
import subprocess
import sys

from conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decoy_python3(directory) -> str:
    """A directory whose `python3` fails: a test that started it instead of sys.executable would fail."""
    bin_dir = directory / "decoy_bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").write_text("#!/bin/sh\necho 'python3 from PATH started' >&2\nexit 97\n")
    (bin_dir / "python3").chmod(0o755)
    return str(bin_dir)


def launch(workdir, steps: int, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    env["PYTHON"] = sys.executable  # launch/local.sh starts this interpreter, not whatever python3 is on PATH
    env["PATH"] = f"{decoy_python3(workdir.parent)}:{env['PATH']}"
    return subprocess.run(
        ["bash", "launch/local.sh", "--processes", "2", "--port", str(free_port()), "--", "train",
         "--config=configs/demo.py", f"--workdir={workdir}", f"--config.train.steps={steps}",
         "--config.train.decay_steps=8", "--config.train.ckpt_every=4", "--config.train.eval_every=4",
         "--config.train.log_every=2", "--config.train.progress=False", "--config.model.n_layer=1",
         "--config.model.block_size=64", "--config.train.batch_size=8", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_two_processes_train_checkpoint_and_resume_together(tmp_path):
    # `data` across the two processes as over a data-centre network (processes stand in for TPU slices).
    out = launch(tmp_path, 4, "--config.mesh.dcn_data=2")
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


AGREE = """
import sys
from gptx import mesh
from gptx.config import ConfigError, default

c = default().mesh
c.update(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
mesh.initialize_distributed(c)
for mine in sys.argv[3:]:
    try:
        print("agreed", mesh.agree_across_processes(None if mine == "none" else int(mine), "checkpoint step"))
    except ConfigError as e:
        print("refused", e)
"""


def test_processes_resume_from_one_step_or_refuse():
    """Each process reads the latest checkpoint from its own view of the workdir; views that differ (a workdir on
    each host's local disk) must stop the run with a clear error instead of restoring different states."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    address = f"127.0.0.1:{free_port()}"
    views = [("4", "4"), ("4", "none")]  # process 0 sees step 4 twice; process 1 sees it, then sees no checkpoint
    procs = [
        subprocess.Popen([sys.executable, "-c", AGREE, address, str(i), *views[i]], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    for out, _ in outs:
        agreed, refused = out.strip().splitlines()[-2:]
        assert agreed == "agreed 4"
        assert refused.startswith("refused processes disagree on the checkpoint step: [4, None]"), refused
