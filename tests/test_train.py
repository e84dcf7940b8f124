"""The training loop and optimizer: exact resume, failure handling, accumulation, GPT-3's AdamW recipe."""

import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_config
from flax import linen as nn

from gptx.data import loader, sources
from gptx.flops import flops_per_token
from gptx.models import GPTConfig
from gptx.train import checkpoints, lm, logs, loop, pretrain
from gptx.train import step as step_lib
from gptx.train.state import decay_mask, lr_schedule


def final_params(workdir, cfg, mesh):
    _, init_fn = pretrain.make_model(cfg)
    return jax.device_get(checkpoints.restore_state(str(workdir), init_fn, mesh, jax.random.key(0)).params)


def test_resumed_run_equals_uninterrupted_run(tmp_path, one_device_mesh):
    cfg = tiny_config(dropout=0.1)  # dropout makes the rng stream part of what must resume exactly
    cfg.train.update(steps=8, decay_steps=8, ckpt_every=4, async_ckpt=True)
    full = pretrain.run(cfg, str(tmp_path / "full"), one_device_mesh)
    cfg.train.steps = 4
    pretrain.run(cfg, str(tmp_path / "split"), one_device_mesh)
    cfg.train.steps = 8
    resumed = pretrain.run(cfg, str(tmp_path / "split"), one_device_mesh)
    assert int(resumed.state.step) == 8
    loss = lambda d: {r["step"]: r["loss"] for r in logs.read_metrics(str(tmp_path / d)) if "loss" in r}
    assert sorted(loss("split")) == list(range(1, 9))
    np.testing.assert_allclose(
        [loss("split")[s] for s in range(1, 9)], [loss("full")[s] for s in range(1, 9)], rtol=1e-6
    )
    jax.tree.map(
        np.testing.assert_array_equal,
        final_params(tmp_path / "split", cfg, one_device_mesh),
        jax.device_get(full.state.params),
    )


def lm_trainer(cfg, workdir, wrap_step=None, data_hook=None):
    tok = pretrain.load_tokenizer(cfg, str(workdir))
    docs = sources.read_documents(cfg.data.corpus)[:400]
    train_docs, val_docs = loader.split_train_val(docs, 0.1)
    trainer = pretrain.make_trainer(cfg, tok, train_docs, val_docs)
    if wrap_step:
        trainer.train_step = wrap_step(trainer.train_step)
    if data_hook:
        trainer.train_data = trainer.train_data.map(data_hook)
    return trainer


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, one_device_mesh):
    cfg = tiny_config()
    cfg.train.update(steps=20, ckpt_every=4, log_every=3)

    def poison_from_step_6(step):
        def poisoned(state, batch, rng):
            new_state, m = step(state, batch, rng)
            bad = state.step >= 5  # the 6th step's loss is NaN, and so are its params
            m["loss"] = jnp.where(bad, jnp.nan, m["loss"])
            new_state = new_state.replace(params=jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new_state.params))
            return new_state, m

        return poisoned

    trainer = lm_trainer(cfg, tmp_path, wrap_step=poison_from_step_6)
    with pytest.raises(loop.NonFiniteLossError, match=r"loss is nan at step 6.*last good checkpoint \(step 4\)"):
        loop.train(trainer, cfg, str(tmp_path), one_device_mesh)
    assert checkpoints.all_steps(str(tmp_path)) == [4]
    params = final_params(tmp_path, cfg, one_device_mesh)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, one_device_mesh):
    cfg = tiny_config()
    cfg.train.update(steps=50, ckpt_every=100)
    seen = []

    def term_on_third_batch(batch):
        seen.append(1)
        if len(seen) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    with pytest.raises(loop.Preempted, match=r"stopped at step \d+ by SIGTERM; rerun the same command") as stop:
        loop.train(lm_trainer(cfg, tmp_path, data_hook=term_on_third_batch), cfg, str(tmp_path), one_device_mesh)
    step = stop.value.step
    assert 3 <= step < 50
    assert checkpoints.latest_step(str(tmp_path)) == step


def test_gradient_accumulation_equals_one_large_batch(one_device_mesh):
    cfg = tiny_config(dropout=0.0)
    model, init_fn = pretrain.make_model(cfg)
    state = nn.meta.unbox(init_fn(jax.random.key(0)))
    rng = np.random.default_rng(0)
    b, t = 8, 32
    batch = {
        "inputs": rng.integers(0, 512, (b, t)),
        "targets": rng.integers(0, 512, (b, t)),
        "positions": np.tile(np.arange(t), (b, 1)),
        "segment_ids": np.ones((b, t), np.int32),
        "weights": (rng.random((b, t)) > 0.3).astype(np.float32),
    }  # uneven weights per micro-batch
    batch = jax.tree.map(jnp.asarray, batch)
    with jax.sharding.use_mesh(one_device_mesh) if hasattr(jax.sharding, "use_mesh") else one_device_mesh:
        s1, m1 = jax.jit(step_lib.make_train_step(lm.loss(model)))(state, batch, jax.random.key(1))
        s4, m4 = jax.jit(step_lib.make_train_step(lm.loss(model), grad_accum=4))(state, batch, jax.random.key(1))
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7), s4.params, s1.params)


def test_weight_decay_applies_to_matrices_only():
    for scan in (False, True):
        cfg = tiny_config(scan_layers=scan)
        model, init_fn = pretrain.make_model(cfg)
        params = nn.meta.unbox(jax.eval_shape(init_fn, jax.random.key(0)).params)
        mask = decay_mask(params)
        flat = {"/".join(str(k.key) for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(mask)}
        assert all(v for k, v in flat.items() if k.endswith(("kernel", "wte", "wpe"))), flat
        assert not any(v for k, v in flat.items() if k.endswith(("bias", "scale"))), flat
        assert sum(flat.values()) == (4 * cfg.model.n_layer if not scan else 4) + 2


def test_schedule_is_linear_warmup_then_cosine_to_ten_percent():
    cfg = tiny_config()
    cfg.train.update(lr=6e-4, warmup_steps=100, steps=1100, decay_steps=0, min_lr_ratio=0.1)
    lr = lr_schedule(cfg.train)
    assert float(lr(0)) == 0.0 and float(lr(50)) == pytest.approx(3e-4)
    assert float(lr(100)) == pytest.approx(6e-4)
    mid = 6e-5 + 0.5 * (6e-4 - 6e-5) * (1 + math.cos(math.pi * 0.5))  # closed-form cosine halfway
    assert float(lr(600)) == pytest.approx(mid, rel=1e-5)
    assert float(lr(1100)) == pytest.approx(6e-5) and float(lr(5000)) == pytest.approx(6e-5)


def test_adamw_update_matches_a_hand_computed_step():
    """One step of clip -> Adam(0.9, 0.95) -> decoupled decay, against the formula."""
    cfg = tiny_config()
    cfg.train.update(lr=1e-2, warmup_steps=0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    from gptx.train.state import make_optimizer

    tx = make_optimizer(cfg.train)
    params = {"w_kernel": jnp.asarray([[1.0, -2.0]]), "b_bias": jnp.asarray([0.5])}
    grads = {
        "w_kernel": jnp.asarray([[3.0, 4.0]]),
        "b_bias": jnp.asarray([0.0]),
    }  # global norm 5 -> clip to 1
    updates, _ = tx.update(grads, tx.init(params), params)
    g = np.array([[0.6, 0.8]])
    m, v = 0.1 * g / (1 - 0.9), 0.05 * g**2 / (1 - 0.95)
    want = -1e-2 * (m / (np.sqrt(v) + 1e-8) + 0.1 * np.array([[1.0, -2.0]]))
    np.testing.assert_allclose(updates["w_kernel"], want, rtol=1e-5)
    np.testing.assert_allclose(updates["b_bias"], [0.0], atol=1e-12)  # no decay on biases
    assert optax.global_norm(grads) == 5.0


def test_flops_per_token_matches_the_palm_nanogpt_estimate():
    cfg = GPTConfig(n_layer=12, n_head=12, d_model=768, vocab_size=50257, block_size=1024)
    non_embedding = 124_439_808 - 1024 * 768  # nanoGPT's N: all params but the position table
    reference = 6 * non_embedding + 12 * 12 * 768 * 1024
    assert flops_per_token(cfg, 1024) == pytest.approx(reference, rel=1e-3)
    banded = GPTConfig(n_layer=12, n_head=12, d_model=768, attention="alternating", local_window=256)
    assert flops_per_token(cfg, 1024) - flops_per_token(banded, 1024) == 6 * 12 * 768 * (1024 - 256)


def test_orbax_checkpoint_holds_the_data_position(tmp_path, one_device_mesh):
    cfg = tiny_config()
    cfg.train.update(steps=4, ckpt_every=4)
    pretrain.run(cfg, str(tmp_path), one_device_mesh)
    step_dir = tmp_path / "checkpoints" / "4"
    assert (step_dir / "state").is_dir() and (step_dir / "data").is_dir()
    assert ocp.CheckpointManager(str(tmp_path / "checkpoints")).latest_step() == 4
