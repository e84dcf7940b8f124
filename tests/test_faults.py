"""Fault injection on the training loop's checkpoints, done for real: damaged files, a corrupt data position,
flipped bytes, exploding parameters, a resume with other settings, a kill mid-save. Each test checks the wanted
behaviour and that nothing already saved was lost (the surviving step's parameters equal what was saved)."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO, tiny_config

from gptx import mesh as mesh_lib
from gptx.data import loader, sources
from gptx.errors import CheckpointError, ConfigError, NonFiniteLossError
from gptx.train import checkpoints, integrity, logs, loop, pretrain


def trainer_for(cfg, workdir):
    tok = pretrain.load_tokenizer(cfg, str(workdir))
    train_docs, val_docs = loader.split_train_val(sources.read_documents(cfg.data.corpus)[:400], 0.1)
    return pretrain.make_trainer(cfg, tok, train_docs, val_docs)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A run of 8 steps with checkpoints at 4 and 8 (async saves), and the state saved at step 4."""
    workdir = tmp_path_factory.mktemp("pristine")
    cfg = tiny_config()
    cfg.train.update(steps=8, ckpt_every=4, async_ckpt=True, keep_ckpts=3)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    loop.train(trainer_for(cfg, workdir), cfg, str(workdir), mesh)
    _, init_fn = pretrain.make_model(cfg)
    with mesh_lib.activation_rules(mesh):
        at_4 = jax.device_get(checkpoints.restore_state(str(workdir), init_fn, mesh, jax.random.key(0), step=4))
    return workdir, cfg, mesh, at_4


def copy_run(pristine, tmp_path):
    workdir, cfg, mesh, at_4 = pristine
    shutil.copytree(workdir, tmp_path / "run")
    return str(tmp_path / "run"), cfg, mesh, at_4


def biggest_file(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def truncate(step_dir):
    path = biggest_file(step_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def overwrite_400_bytes(step_dir):
    path = biggest_file(step_dir)
    rng = np.random.default_rng(0)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(rng.integers(0, 256, 400, dtype=np.uint8).tobytes())


def garbage_data_position(step_dir):
    (path,) = glob.glob(os.path.join(step_dir, "data", "process_*.json"))
    with open(path, "w") as f:
        f.write("{not json")


DAMAGE = {
    "truncated array file": truncate,
    "manifest.ocdbt missing": lambda d: os.remove(
        glob.glob(os.path.join(d, "state", "**", "manifest.ocdbt"), recursive=True)[0]
    ),
    "state/ deleted": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "garbage in the data-iterator JSON": garbage_data_position,
    "400 random bytes inside an array": overwrite_400_bytes,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_step_is_moved_aside_and_the_previous_one_restored(pristine, tmp_path, caplog, damage):
    workdir, cfg, mesh, at_4 = copy_run(pristine, tmp_path)
    DAMAGE[damage](os.path.join(workdir, "checkpoints", "8"))
    _, init_fn = pretrain.make_model(cfg)
    trainer = trainer_for(cfg, workdir)
    with mesh_lib.activation_rules(mesh), checkpoints.manager(workdir, keep=3) as mngr:
        state = checkpoints.restore_or_init(mngr, init_fn, mesh, jax.random.key(0), iter(trainer.train_data))
    assert int(state.step) == 4
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), at_4.params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state), at_4.opt_state)
    warning = [r.getMessage() for r in caplog.records if " is damaged (" in r.getMessage()]
    assert len(warning) == 1 and "checkpoint step 8 is damaged" in warning[0], warning
    assert checkpoints.all_steps(workdir) == [4]
    (moved,) = glob.glob(os.path.join(workdir, integrity.DAMAGED, "8-*"))  # set aside, not deleted
    assert os.listdir(moved)


def test_a_resumed_run_continues_from_the_surviving_step_to_the_end(pristine, tmp_path):
    workdir, cfg, mesh, _ = copy_run(pristine, tmp_path)
    overwrite_400_bytes(os.path.join(workdir, "checkpoints", "8"))
    cfg = cfg.copy_and_resolve_references()
    cfg.train.steps = 10
    result = loop.train(trainer_for(cfg, workdir), cfg, workdir, mesh)
    assert int(result.state.step) == 10
    steps = [r["step"] for r in logs.read_metrics(workdir) if "loss" in r]
    assert steps == list(range(1, 11))  # rows 5..8 of the first run were dropped, then logged again once


def test_every_step_damaged_is_one_clear_error(pristine, tmp_path):
    workdir, cfg, mesh, _ = copy_run(pristine, tmp_path)
    for step in (4, 8):
        shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "state"))
    _, init_fn = pretrain.make_model(cfg)
    with (
        mesh_lib.activation_rules(mesh),
        checkpoints.manager(workdir) as mngr,
        pytest.raises(CheckpointError, match="no checkpoint .* reads cleanly"),
    ):
        checkpoints.restore_or_init(mngr, init_fn, mesh, jax.random.key(0))
    assert len(glob.glob(os.path.join(workdir, integrity.DAMAGED, "*"))) == 2


def test_params_only_restores_fall_back_without_touching_the_other_run(pristine, tmp_path):
    workdir, cfg, mesh, at_4 = copy_run(pristine, tmp_path)
    os.remove(glob.glob(os.path.join(workdir, "checkpoints", "8", "state", "**", "manifest.ocdbt"), recursive=True)[0])
    model, _ = pretrain.make_model(cfg)
    target = checkpoints.abstract_params(model, jnp.zeros((1, 32), jnp.int32))
    with mesh_lib.activation_rules(mesh):
        params, step = checkpoints.restore_params(workdir, mesh, target)
    assert step == 4
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), at_4.params)
    assert checkpoints.all_steps(workdir) == [4, 8]  # a run read from is never modified


@pytest.mark.parametrize(
    "override, key",
    [({"n_layer": 3}, "model.n_layer"), ({"d_model": 64}, "model.d_model")],
)
def test_resuming_with_another_model_names_what_differs(pristine, tmp_path, override, key):
    workdir, cfg, mesh, _ = copy_run(pristine, tmp_path)
    other = cfg.copy_and_resolve_references()
    other.model.update(override)
    other.train.steps = 12
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        loop.train(trainer_for(other, workdir), other, workdir, mesh)
    assert checkpoints.all_steps(workdir) == [4, 8]  # nothing moved or overwritten


def test_resuming_with_another_worker_count_names_it(pristine, tmp_path):
    workdir, cfg, mesh, _ = copy_run(pristine, tmp_path)
    other = cfg.copy_and_resolve_references()
    other.data.worker_count = cfg.data.worker_count + 1
    with pytest.raises(ConfigError, match=r"data\.worker_count: saved \d+, now \d+"):
        integrity.check_resume(workdir, other)


def test_exploded_parameters_are_never_saved(tmp_path, one_device_mesh):
    """A finite loss over parameters that are already inf or NaN (lr 1e6 territory): the guard at the save."""
    cfg = tiny_config()
    cfg.train.update(steps=8, ckpt_every=4, log_every=100)

    def explode_at_step_8(step):
        def exploded(state, batch, rng):
            new_state, m = step(state, batch, rng)
            bad = state.step >= 7  # the 8th step: its own loss was computed on finite params
            params = jax.tree.map(lambda p: jnp.where(bad, jnp.inf, p), new_state.params)
            return new_state.replace(params=params), m  # the loss this step saw is still finite

        return exploded

    trainer = trainer_for(cfg, tmp_path)
    trainer.train_step = explode_at_step_8(trainer.train_step)
    with pytest.raises(
        NonFiniteLossError, match=r"parameters are not finite at step 8.*last good checkpoint \(step 4\)"
    ):
        loop.train(trainer, cfg, str(tmp_path), one_device_mesh)
    assert checkpoints.all_steps(str(tmp_path)) == [4]


def test_a_non_finite_gradient_norm_stops_the_run(tmp_path, one_device_mesh):
    cfg = tiny_config()
    cfg.train.update(steps=8, ckpt_every=4)

    def inf_grad_norm_at_step_6(step):
        def poisoned(state, batch, rng):
            new_state, m = step(state, batch, rng)
            m["grad_norm"] = jnp.where(state.step == 5, jnp.inf, m["grad_norm"])
            return new_state, m

        return poisoned

    trainer = trainer_for(cfg, tmp_path)
    trainer.train_step = inf_grad_norm_at_step_6(trainer.train_step)
    with pytest.raises(NonFiniteLossError, match="grad norm is inf at step 6"):
        loop.train(trainer, cfg, str(tmp_path), one_device_mesh)
    assert checkpoints.all_steps(str(tmp_path)) == [4]


def test_every_run_records_its_config(pristine):
    workdir, cfg, _, _ = pristine
    saved = integrity.saved_config(str(workdir))
    assert saved["model"] == cfg.model.to_dict() and saved["train"]["steps"] == 8


TRAIN = [
    sys.executable, "-m", "gptx.main", "train", "--config=configs/demo.py",
    "--config.model.n_layer=1", "--config.model.d_model=32", "--config.model.n_head=2", "--config.data.seq_len=32",
    "--config.model.block_size=32", "--config.train.batch_size=4", "--config.train.eval_every=1000",
    "--config.train.ckpt_every=1", "--config.train.keep_ckpts=100", "--config.train.async_ckpt=True",
    "--config.train.progress=False", "--config.mesh.data=1", "--config.mesh.fsdp=1",
]  # fmt: skip


@pytest.mark.slow
def test_kill_9_during_async_saves_then_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL while a checkpoint is being written every step; the resumed run ends where a clean one does."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    clean = subprocess.run([*TRAIN, f"--workdir={tmp_path / 'clean'}", "--config.train.steps=40"], cwd=REPO, env=env)
    assert clean.returncode == 0
    run = [*TRAIN, f"--workdir={tmp_path / 'killed'}", "--config.train.steps=40"]
    proc = subprocess.Popen(run, cwd=REPO, env=env)
    deadline = time.time() + 300
    while len(checkpoints.all_steps(str(tmp_path / "killed"))) < 10 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 10 <= len(checkpoints.all_steps(str(tmp_path / "killed"))) < 40
    assert subprocess.run(run, cwd=REPO, env=env).returncode == 0
    cfg = ml_collections.ConfigDict(integrity.saved_config(str(tmp_path / "clean")))
    _, init_fn = pretrain.make_model(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    final = {
        d: jax.device_get(checkpoints.restore_state(str(tmp_path / d), init_fn, mesh, jax.random.key(0)).params)
        for d in ("clean", "killed")
    }
    jax.tree.map(np.testing.assert_array_equal, final["killed"], final["clean"])


def test_commands_that_read_a_run_take_its_model_shape(pristine):
    """`sample`/`eval` on a run need no repeated --config.model.* overrides: the shape comes from config.json."""
    workdir, cfg, _, at_4 = pristine
    from gptx import config as config_lib

    other = config_lib.default()  # GPT-2 small's shape: 12 layers, d_model 768, vocab 50,257
    other.mesh.update(data=-1, fsdp=1, tensor=1)
    model, params, _ = pretrain.load_trained(other, str(workdir))
    assert (model.cfg.n_layer, model.cfg.d_model, model.cfg.vocab_size) == (2, 32, 512)
    assert jax.tree.map(np.shape, jax.device_get(params)) == jax.tree.map(np.shape, at_4.params)
