"""Launch scripts: a dry run prints exactly the commands a real launch would run; missing arguments are refused.

What a user expects before spending money on a pod: the slice is created (or reused) with the right type and
software image, the code reaches every worker, one command runs on all of them with the multi-host flag,
every worker's log comes back, and the slice is deleted only when asked.
"""

import os
import shlex
import subprocess

import pytest
from conftest import REPO

TRAIN = ["train", "--config=configs/gpt3.py:350m", "--workdir=/mnt/shared/gpt3-350m"]


def sh(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", f"launch/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env
    )


def commands(out: subprocess.CompletedProcess) -> list[list[str]]:
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


def test_tpu_pod_dry_run_creates_copies_runs_everywhere_fetches_logs_and_deletes():
    out = sh("tpu_pod.sh", "--dry-run", "--name", "gptx-350m", "--zone", "us-west4-a", "--type", "v5litepod-16",
             "--delete", "--", *TRAIN)  # fmt: skip
    cmds = commands(out)
    gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
    where = "--zone=us-west4-a"
    # Reuse when `describe` finds the slice, create otherwise.
    assert cmds[0][:6] == [*gcloud, "describe", "gptx-350m"] and "||" in cmds[0]
    create = cmds[0][cmds[0].index("||") + 1 :]
    assert create == [*gcloud, "create", "gptx-350m", where, "--accelerator-type=v5litepod-16",
                      "--version=v2-alpha-tpuv5-lite"]  # fmt: skip
    assert cmds[1][:2] == ["tar", "-czf"] and "--exclude=.git" in cmds[1]
    assert cmds[2] == [*gcloud, "scp", cmds[1][2], "gptx-350m:gptx.tgz", where, "--worker=all"]
    assert cmds[3][:5] == [*gcloud, "ssh"] and "--worker=all" in cmds[3] and "pip install" in cmds[3][-1]
    # One command on every worker; a v5e-16 has 4 hosts, so JAX must start its multi-host runtime.
    run = cmds[4]
    assert run[:8] == [*gcloud, "ssh", "gptx-350m", where, "--worker=all"]
    remote = shlex.split(run[-1].removeprefix("--command="))
    assert remote[remote.index("python3") :][:7] == ["python3", "-m", "gptx.main", *TRAIN,
                                                     "--config.mesh.multihost=yes"]  # fmt: skip
    # Each of the 4 workers' logs, then the delete that was asked for.
    fetches = [c for c in cmds if c[4:5] == ["scp"] and c[5] == "gptx-350m:gptx_run.log"]
    assert [c[6] for c in fetches] == [f"logs/gptx-350m/worker-{w}.log" for w in range(4)]
    assert [c[-1] for c in fetches] == [f"--worker={w}" for w in range(4)]
    assert cmds[-1] == [*gcloud, "delete", "gptx-350m", where, "--quiet"]


def test_tpu_pod_keeps_the_slice_unless_asked_and_single_host_needs_no_multihost_flag():
    cmds = commands(sh("tpu_pod.sh", "--dry-run", "--name", "n", "--zone", "z", "--type", "v4-8", "--", *TRAIN))
    assert not any(c[4] == "delete" for c in cmds if len(c) > 4)
    run = next(c for c in cmds if c[4:5] == ["ssh"] and "gptx.main" in c[-1])
    assert "multihost" not in run[-1]
    assert len([c for c in cmds if c[-1].startswith("--worker=") and c[-1] != "--worker=all"]) == 1  # one host
    # --delete alone only deletes.
    assert commands(sh("tpu_pod.sh", "--dry-run", "--name", "n", "--zone", "z", "--type", "v4-8", "--delete")) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "n", "--zone=z", "--quiet"]
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["--name", "n", "--type", "v5litepod-16", "--", *TRAIN],  # no zone
        ["--name", "n", "--zone", "z", "--type", "v5litepod-16"],  # no command, no --delete
        ["--name", "n", "--zone", "z", "--type", "v5litepod-16", "--", "train", "--workdir=w"],  # no --config
        ["--name", "n", "--zone", "z", "--type", "tpu-big", "--", *TRAIN],  # not FAMILY-SIZE
    ],
)
def test_tpu_pod_refuses_missing_arguments(args):
    out = sh("tpu_pod.sh", "--dry-run", *args)
    assert out.returncode == 2 and "usage:" in out.stderr and not out.stdout


def test_gpu_multihost_dry_run_is_one_srun_with_a_task_per_node():
    out = sh("gpu_multihost.sh", "--dry-run", "--nodes", "2", "--gpus-per-node", "8", "--partition", "a100",
             "--time", "24:00:00", "--", *TRAIN)  # fmt: skip
    mkdir, srun = commands(out)
    assert mkdir == ["mkdir", "-p", "logs"]
    script = str(REPO / "launch" / "gpu_multihost.sh")
    assert srun == ["srun", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--kill-on-bad-exit=1",
                    "--output=logs/gptx-%j-%t.log", "--partition=a100", "--time=24:00:00",
                    "bash", script, "--task", "--port", "12355", "--", *TRAIN]  # fmt: skip


def test_gpu_multihost_task_turns_slurm_environment_into_the_coordinator(tmp_path):
    # A stand-in scontrol expands the node list as SLURM would; `echo` stands in for python.
    (tmp_path / "scontrol").write_text("#!/bin/sh\necho gpu-node-17\necho gpu-node-18\n")
    (tmp_path / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PYTHON": "echo", "SLURM_PROCID": "1",
           "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu-node-[17-18]"}  # fmt: skip
    out = sh("gpu_multihost.sh", "--task", "--port", "4000", "--", *TRAIN, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["-m", "gptx.main", *TRAIN, "--config.mesh.coordinator_address=gpu-node-17:4000",
                                  "--config.mesh.num_processes=2", "--config.mesh.process_id=1"]  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["--", *TRAIN],  # no --nodes
        ["--nodes", "0", "--", *TRAIN],
        ["--nodes", "2"],  # no command
        ["--nodes", "2", "--", "train", "--config=configs/demo.py"],  # no --workdir
    ],
)
def test_gpu_multihost_refuses_missing_arguments(args):
    out = sh("gpu_multihost.sh", "--dry-run", *args)
    assert out.returncode == 2 and "usage:" in out.stderr and not out.stdout


def test_local_dry_run_starts_one_process_per_rank_on_loopback():
    out = sh("local.sh", "--dry-run", "--processes", "2", "--port", "5000", "--", "train", "--config=configs/demo.py",
             "--workdir=/tmp/w")  # fmt: skip
    cmds = commands(out)
    assert [c[-3:] for c in cmds] == [
        ["--config.mesh.coordinator_address=127.0.0.1:5000", "--config.mesh.num_processes=2",
         f"--config.mesh.process_id={i}"]
        for i in range(2)
    ]  # fmt: skip
    assert sh("local.sh", "--dry-run", "--", "train").returncode == 2
