"""Ahead-of-time memory checks: the figures a user sizes a pod by are exact where they can be, and an OOM is
reported before any hardware is involved.

Parameter counts are checked against the closed form of a GPT-2/3 decoder, per-device bytes against the XLA
compiler's own accounting of the step's arguments, and the GPT-3 1.3B check runs in a process whose peak memory
stays far below the 5 GB its parameters alone would take.
"""

import json
import os
import subprocess
import sys

import jax
import pytest
from conftest import REPO, tiny_config

from gptx import aot, mesh
from gptx.config import ConfigError


def closed_form_params(n_layer: int, d: int, vocab: int, context: int) -> int:
    """GPT-2/3 parameters when n_head * d_head = d_model: per layer 12 d^2 + 13 d (QKV, output projection, MLP
    4d with biases, two LayerNorms), plus token and position tables and the final LayerNorm."""
    return n_layer * (12 * d * d + 13 * d) + vocab * d + context * d + 2 * d


def test_replicated_parameter_bytes_are_four_per_parameter_of_the_closed_form():
    cfg = tiny_config()
    cfg.mesh.update(data=8, fsdp=1)  # pure data parallelism: every device holds every parameter
    report = aot.analyze(cfg, aot.parse_topology("abstract:8"))
    n = closed_form_params(2, 32, 512, 32)
    assert report.num_params == n
    assert report.param_bytes == 4 * n  # float32
    # AdamW keeps two float32 moments per parameter, plus step counters.
    assert 2 * 4 * n <= report.optimizer_bytes <= 2 * 4 * n + 64
    assert report.method == "abstract" and report.gradient_bytes == report.param_bytes


def test_compiled_step_arguments_are_exactly_the_sharded_state_and_batch():
    cfg = tiny_config()
    cfg.mesh.update(data=2, fsdp=4)
    report = aot.analyze(cfg, aot.parse_topology("cpu:8"), jax.devices())
    assert report.method == "compiled (cpu)"
    # The compiler's argument bytes per device are the shard shapes' bytes we report, to the byte.
    assert report.compiler["argument"] == report.param_bytes + report.optimizer_bytes + report.batch_bytes
    # FSDP over 4 splits every matrix and table along `embed`; LayerNorms and some biases stay whole.
    full = 4 * closed_form_params(2, 32, 512, 32)
    assert full / 4 <= report.param_bytes < full / 3
    assert report.batch_bytes == 5 * 4 * (8 // 8) * 32  # 5 [B, T] int32/float32 arrays, one row per device
    assert report.activation_bytes > 0 and report.total_bytes >= report.compiler["argument"]


def test_gpt3_1p3b_on_a_v5e_16_is_reported_as_not_fitting_without_allocating_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    rss = tmp_path / "peak_rss"
    # The command's own peak RSS (VmHWM, which starts afresh at exec), written by the process itself as it exits.
    # getrusage would not do: RUSAGE_CHILDREN reports the largest child this test process ever had, and a child's
    # ru_maxrss keeps the forking process's high-water mark across exec.
    measured = (
        "import runpy, sys\n"
        "sys.argv = ['gptx.main', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('gptx.main', run_name='__main__')\n"
        "finally:\n"
        "    hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0]\n"
        f"    open({str(rss)!r}, 'w').write(hwm)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", measured, "aot", "--config=configs/gpt3.py:1.3b", f"--workdir={tmp_path}",
         "--config.aot.topology=v5e:4x4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    peak = int(rss.read_text()) * 1024  # kB -> bytes
    report = json.loads((tmp_path / aot.REPORT).read_text())
    n = closed_form_params(24, 2048, 50257, 2048)  # 1.316B
    assert report["num_params"] == n and report["num_devices"] == 16
    # FSDP over 16 chips: a sixteenth of the float32 parameters, plus the few replicated LayerNorms and biases.
    assert 4 * n / 16 <= report["param_bytes"] <= 4 * n / 16 * 1.01
    # The paper's batch (512 x 2048 tokens) in one step needs far more than a v5e's 16 GiB: refused, one line.
    assert report["fits"] is False and out.returncode == 2
    assert "DOES NOT FIT" in out.stdout and "needs" in out.stderr and "16 GiB" in out.stderr
    assert peak < 3 * 2**30 < 4 * n, f"peak RSS {peak / 2**30:.1f} GiB: the model was allocated"


def test_topology_and_mesh_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"config.aot.topology='tpu9:4x4': unknown chip"):
        aot.parse_topology("tpu9:4x4")
    with pytest.raises(ConfigError, match="is not CHIP:SHAPE"):
        aot.parse_topology("v5e-16")
    assert aot.parse_topology("h100:2x8").num_devices == 16
    assert aot.parse_topology("v5e:4x4", num_slices=2).num_devices == 32
    cfg = tiny_config()
    cfg.mesh.update(data=4, fsdp=2, dcn_data=3)
    with pytest.raises(ConfigError, match="config.mesh.dcn_data=3 must be positive and divide config.mesh.data=4"):
        mesh.resolve_mesh_shape(cfg.mesh, 8)
    # One process on one host has one unit of the slow network, not 2.
    cfg.mesh.dcn_data = 2
    with pytest.raises(ConfigError, match="config.mesh.dcn_data=2"):
        mesh.make_mesh(cfg.mesh, devices=jax.devices())


def _libtpu() -> bool:
    path = os.environ.get("TPU_LIBRARY_PATH", "")
    if path:
        return os.path.isfile(path)
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


needs_libtpu = pytest.mark.skipif(
    not _libtpu(), reason="libtpu not installed (pip install libtpu, or TPU_LIBRARY_PATH)"
)


@needs_libtpu
def test_tpu_compiler_reports_memory_on_compile_only_devices():
    cfg = tiny_config()
    cfg.mesh.update(data=1, fsdp=-1)
    target = aot.parse_topology("v5e:2x2")
    report = aot.analyze(cfg, target, aot.tpu_devices(target))
    assert report.method == "compiled (tpu)" and report.fits
    # TPU layouts pad small or sharded dimensions to tiles: the compiler's bytes are at least the logical ones,
    # and the total is the compiler's (arguments + outputs - donated + temporaries).
    c = report.compiler
    assert c["argument"] >= report.param_bytes + report.optimizer_bytes + report.batch_bytes
    assert report.total_bytes == c["argument"] + c["output"] - c["alias"] + c["temp"]
    assert "laid out" in report.table()


@needs_libtpu
def test_dcn_data_spans_slices_and_keeps_fsdp_inside_one():
    cfg = tiny_config()
    cfg.mesh.update(data=2, fsdp=4, dcn_data=2)
    target = aot.parse_topology("v5e:2x2", num_slices=2)
    grid = mesh.make_mesh(cfg.mesh, devices=aot.tpu_devices(target, num_slices=2)).devices  # [data, fsdp, tensor]
    assert [{d.slice_index for d in grid[i].flat} for i in range(2)] == [{0}, {1}]
