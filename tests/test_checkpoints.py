"""The one checkpoint module: full states and params alone restore into the target mesh's shardings, a smaller
token table is read for growing, and a checkpoint that does not fit the model is an error naming the parameter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from gptx import mesh as mesh_lib
from gptx.train import checkpoints, pretrain


def saved_run(tmp_path, **model):
    """A TrainState saved at step 3 from an 8-device FSDP mesh; returns (workdir, state)."""
    cfg = tiny_config(**model)
    cfg.mesh.update(data=1, fsdp=8, tensor=1)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    _, init_fn = pretrain.make_model(cfg)
    with mesh_lib.activation_rules(mesh):
        state = checkpoints.init_state(init_fn, mesh, jax.random.key(0)).replace(step=jnp.asarray(3))
    with checkpoints.manager(str(tmp_path)) as mngr:
        checkpoints.save(mngr, 3, state)
    return str(tmp_path), jax.device_get(state)


def other_mesh():
    cfg = tiny_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    return mesh_lib.make_mesh(cfg.mesh)


def test_params_restore_into_another_meshs_shardings_without_the_optimizer(tmp_path):
    workdir, saved = saved_run(tmp_path)
    assert checkpoints.all_steps(workdir) == [3] and checkpoints.latest_step(workdir) == 3
    mesh = other_mesh()
    model, _ = pretrain.make_model(tiny_config())
    target = checkpoints.abstract_params(model, jnp.zeros((1, 32), jnp.int32))
    with mesh_lib.activation_rules(mesh):
        params, step = checkpoints.restore_params(workdir, mesh, target)
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), saved.params)
    want = mesh_lib.tree_shardings(mesh, target)
    got = jax.tree.map(lambda x: x.sharding, params)
    assert jax.tree.leaves(got) == jax.tree.leaves(want)
    # Not trivially: the tensor-parallel kernels really are split over the new mesh's `tensor` axis.
    assert any("tensor" in str(s.spec) for s in jax.tree.leaves(got))


def test_full_state_restores_in_the_shardings_init_implies(tmp_path):
    workdir, saved = saved_run(tmp_path)
    mesh = other_mesh()
    _, init_fn = pretrain.make_model(tiny_config())
    with mesh_lib.activation_rules(mesh):
        state = checkpoints.restore_state(workdir, init_fn, mesh, jax.random.key(1))
        shardings, _ = checkpoints.abstract_state(init_fn, mesh, jax.random.key(1))
    assert int(state.step) == 3
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state), saved.opt_state)
    assert jax.tree.leaves(jax.tree.map(lambda x: x.sharding, state)) == jax.tree.leaves(shardings)


def test_a_checkpoint_that_does_not_fit_the_model_names_the_parameter(tmp_path):
    workdir, saved = saved_run(tmp_path, vocab_size=500)
    mesh = other_mesh()
    bigger, _ = pretrain.make_model(tiny_config(vocab_size=512))
    target = checkpoints.abstract_params(bigger, jnp.zeros((1, 32), jnp.int32))
    with mesh_lib.activation_rules(mesh), pytest.raises(ValueError, match="parameter wte has shape \\(500, 32\\)"):
        checkpoints.restore_params(workdir, mesh, target)
    with mesh_lib.activation_rules(mesh):  # for growing: the smaller table comes back whole
        params, _ = checkpoints.restore_params(workdir, mesh, target, strict=False)
        grown = checkpoints.merge_params(target, params, jax.random.key(0), 0.02)
    np.testing.assert_array_equal(jax.device_get(params["wte"]), saved.params["wte"])
    assert grown["wte"].value.shape == (512, 32)
    np.testing.assert_array_equal(np.asarray(grown["wte"].value)[:500], saved.params["wte"])
    deeper, _ = pretrain.make_model(tiny_config(vocab_size=500, n_layer=3))
    target = checkpoints.abstract_params(deeper, jnp.zeros((1, 32), jnp.int32))
    with mesh_lib.activation_rules(mesh), pytest.raises(ValueError, match="no parameter h_2"):
        checkpoints.restore_params(workdir, mesh, target)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoints.restore_params(str(tmp_path / "empty"), mesh, target)
