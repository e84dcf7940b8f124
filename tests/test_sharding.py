"""The one mesh: a (2, 2, 2) data x fsdp x tensor mesh of 8 CPU devices computes what one device computes,
and parameters are really laid out as the logical-axis rules say."""

import jax
import numpy as np
import pytest
from conftest import tiny_config
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from gptx import mesh as mesh_lib
from gptx.train import checkpoints, lm, pretrain
from gptx.train import step as step_lib

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def make_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    b, t = cfg.train.batch_size, cfg.data.seq_len
    tokens = rng.integers(0, cfg.model.vocab_size, (b, t + 1)).astype(np.int32)
    split = t // 3  # two packed documents per row
    seg = np.where(np.arange(t) < split, 1, 2).astype(np.int32)[None].repeat(b, 0)
    pos = np.where(np.arange(t) < split, np.arange(t), np.arange(t) - split).astype(np.int32)[None].repeat(b, 0)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "positions": pos,
        "segment_ids": seg,
        "weights": np.ones((b, t), np.float32),
    }


def step_on(mesh, cfg, batch):
    """Init, grads and one optimizer step on `mesh`; returns host copies and the sharded state."""
    model, init_fn = pretrain.make_model(cfg)
    rng = jax.random.key(0)
    with mesh_lib.activation_rules(mesh):
        shardings, _ = checkpoints.abstract_state(init_fn, mesh, rng)
        state = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(rng)
        placed = mesh_lib.put_batch(mesh, batch)
        grad_fn = jax.jit(jax.grad(lambda p, b: lm.lm_loss_sum(p, b, None, model)[0]))
        grads = grad_fn(state.params, placed)
        step = jax.jit(step_lib.make_train_step(lm.loss(model)), out_shardings=(shardings, None))
        new_state, metrics = step(state, placed, rng)
        # The models' activation constraints must reach the compiler (they are silently dropped when
        # flax sees no mesh).
        assert step.lower(state, placed, rng).as_text().count("sharding_constraint") >= 10
    return jax.device_get((metrics["loss"], grads, new_state.params)), new_state


def test_sharded_step_equals_single_device_step():
    cfg = tiny_config(n_head=4, d_model=64)
    cfg.train.batch_size = 8
    batch = make_batch(cfg)
    one = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    eight = mesh_lib.make_mesh(cfg.mesh)
    assert dict(eight.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    (loss1, grads1, params1), _ = step_on(one, cfg, batch)
    (loss8, grads8, params8), state8 = step_on(eight, cfg, batch)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads8, grads1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params8, params1)

    # The layout the rules promise: embed -> fsdp; heads, mlp, vocab -> tensor; optimizer state alike.
    p = state8.params
    expected = {
        ("wte",): P("tensor", "fsdp"),
        ("h_0", "mlp", "fc_kernel"): P("fsdp", "tensor"),
        ("h_0", "mlp", "proj_kernel"): P("tensor", "fsdp"),
        ("h_0", "attn", "qkv_kernel"): P("fsdp", None, "tensor", None),
        ("h_0", "attn", "out_kernel"): P("tensor", None, "fsdp"),
    }
    mu = state8.opt_state[1][0].mu
    for path, spec in expected.items():
        leaf, mu_leaf = p, mu
        for k in path:
            leaf, mu_leaf = leaf[k], mu_leaf[k]
        assert leaf.sharding.spec == spec, path
        assert mu_leaf.sharding.spec == spec, path
    fc = p["h_0"]["mlp"]["fc_kernel"]  # [64, 256] over fsdp=2 x tensor=2
    assert {s.data.shape for s in fc.addressable_shards} == {(32, 128)}


def test_batches_are_split_over_data_and_fsdp():
    cfg = tiny_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    placed = mesh_lib.put_batch(mesh, make_batch(cfg))
    x = placed["inputs"]
    assert x.shape == (8, 32) and x.sharding.spec == P(("data", "fsdp"), None)
    assert {s.data.shape for s in x.addressable_shards} == {(2, 32)}
