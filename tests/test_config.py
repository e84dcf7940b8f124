"""Bad configs fail before anything compiles, with one message naming the key."""

import os
import subprocess
import sys

import ml_collections
import pytest
from conftest import REPO, load_config, tiny_config

from gptx import config as config_lib
from gptx.config import ConfigError


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda c: c.model.__setattr__("d_model", 33), "config.model.d_model=33 is not divisible"),
        (lambda c: c.train.__setattr__("batch_size", 7), "config.train.batch_size=7"),
        (lambda c: c.model.__setattr__("arch", "gpt5"), "config.model.arch"),
        (lambda c: c.model.__setattr__("remat", "some"), "config.model.remat"),
        (lambda c: c.model.__setattr__("dropout", 1.5), "config.model.dropout"),
        (lambda c: c.data.__setattr__("seq_len", 4096), "config.data.seq_len=4096"),
        (lambda c: c.train.__setattr__("steps", 0), "config.train.steps=0"),
    ],
)
def test_impossible_values_name_the_key(change, named):
    cfg = tiny_config()
    cfg.train.grad_accum = 2 if named == "config.train.batch_size=7" else 1
    change(cfg)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("[", r"\[")):
        config_lib.validate(cfg, num_devices=1)


def test_unknown_and_mistyped_keys_are_rejected():
    cfg = tiny_config()
    with cfg.unlocked():
        cfg.train.stepz = 3
    with pytest.raises(ConfigError, match=r"unknown config key config\.train\.stepz.*steps"):
        config_lib.validate(cfg)
    # A config file that builds its own ConfigDict can hold any type; validation catches it.
    raw = tiny_config().to_dict()
    raw["model"]["n_layer"] = "twelve"
    cfg = ml_collections.ConfigDict(raw)
    with pytest.raises(ConfigError, match=r"config\.model\.n_layer='twelve' should be a int"):
        config_lib.validate(cfg)


def test_mesh_that_does_not_fit_the_devices():
    cfg = tiny_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    with pytest.raises(ConfigError, match=r"needs 8 devices but 4 are available"):
        config_lib.validate(cfg, num_devices=4)
    cfg.mesh.update(data=-1, fsdp=3, tensor=1)
    with pytest.raises(ConfigError, match=r"do not divide 8 devices"):
        config_lib.validate(cfg, num_devices=8)
    cfg.mesh.update(data=-1, fsdp=1, tensor=4)
    with pytest.raises(ConfigError, match=r"n_head=2 is not divisible by config\.mesh\.tensor=4"):
        config_lib.validate(cfg, num_devices=8)


def test_every_shipped_config_is_valid():
    for name, args in {
        "gpt1": ["117m"],
        "gpt2": ["124m", "355m", "774m", "1.5b"],
        "demo": [None],
        "finetune": ["sst2", "rte,snli,hellaswag"],
        "scaling": ["", "tiny"],
        "gpt3": ["125m", "350m", "760m", "1.3b", "2.7b", "6.7b", "13b", "175b"],
    }.items():
        for arg in args:
            config_lib.validate(load_config(name, arg))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m gptx.main ARGS` as a user runs it: one CPU device, not the tests' 8 simulated ones."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, "-m", "gptx.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_cli_rejects_bad_config_before_compiling(tmp_path):
    out = run_cli("train", "--config=configs/demo.py", f"--workdir={tmp_path}", "--config.model.n_head=3")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "gptx: error: config.model.d_model=128 is not divisible by config.model.n_head=3 "
        "(set config.model.d_head to decouple them)"
    )
    assert not (tmp_path / "checkpoints").exists()
    out = run_cli("train", "--config=configs/demo.py", f"--workdir={tmp_path}", "--config.train.stepz=3")
    assert out.returncode == 2 and "unknown config key 'stepz'" in out.stderr and "steps" in out.stderr
    out = run_cli("fly", "--config=configs/demo.py", f"--workdir={tmp_path}")
    from gptx.main import COMMANDS

    assert out.returncode != 0 and f"usage: python -m gptx.main <{'|'.join(COMMANDS)}>" in out.stderr
    assert {"train", "sample", "eval", "prepare"} <= set(COMMANDS)


def test_config_and_errors_import_no_jax_and_no_mesh():
    """config.validate checks the mesh shape without gptx.mesh (and jax): no config <-> mesh import cycle."""
    import ast

    for module, allowed in (
        ("config", {"gptx.errors", "gptx.config_data_prep"}),
        ("errors", set()),
        ("config_data_prep", set()),
    ):
        tree = ast.parse((REPO / "gptx" / f"{module}.py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert {m for m in imported if m.split(".")[0] in ("gptx", "jax", "flax", "numpy")} == allowed, module


def test_remat_names_have_one_source():
    from gptx import mesh
    from gptx.models import gpt

    assert set(gpt.REMAT_POLICIES) == {name for name, policy in config_lib.REMAT_POLICIES.items() if policy}
    assert mesh.resolve_mesh_shape is config_lib.resolve_mesh_shape and mesh.MESH_AXES == config_lib.MESH_AXES
    cfg = tiny_config()
    for name in config_lib.REMAT_POLICIES:
        cfg.model.remat = name
        config_lib.validate(cfg)
    cfg.model.remat = "dots_saveable"
    with pytest.raises(ConfigError, match="config.model.remat='dots_saveable' is not one of none, full, dots"):
        config_lib.validate(cfg)
