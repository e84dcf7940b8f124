"""Splash attention (Pallas, interpreted on CPU) computes the attention the XLA path computes.

The kernel is the one TPUs run: here Pallas' interpreter executes it, so its block-sparse mask (causal tiles,
GPT-3's band, packed documents) and its backward kernels are checked against `jax.nn.dot_product_attention`.
Sequences are 256 tokens in tiles of 128, so a band of 64 leaves whole tiles unvisited.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx.errors import ConfigError
from gptx.models import splash
from gptx.models.attention import dot_product_attention
from gptx.models.gpt import GPT, GPTConfig

T, BLOCK = 256, 128
BLOCKS = (BLOCK, BLOCK)


def _qkv(b: int, n: int, h: int = 16, t: int = T, seed: int = 0) -> tuple[jax.Array, ...]:
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v = (jax.random.normal(key, (b, t, n, h), jnp.float32) for key in keys[:3])
    return q, k, v, jax.random.normal(keys[3], (b, t, n, h), jnp.float32)


def _packed(b: int, t: int = T) -> jax.Array:
    """[b, t] segment ids: documents of uneven lengths, crossing tile boundaries, and trailing padding (0)."""
    bounds = np.array([0, 40, 150, 200, t - 10])
    ids = np.searchsorted(bounds, np.arange(t), side="right").astype(np.int32)  # 1 .. 4, then 5
    ids[ids == 5] = 0
    return jnp.asarray(np.stack([np.roll(ids, 7 * r) for r in range(b)]))


def _out_and_grads(impl: str, q, k, v, ct, **kw) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """(attention output, d<out, ct>/d(q, k, v)): one vjp covers the forward and the backward kernels."""

    def attend(q, k, v):
        if impl == "splash":
            return splash.splash_attention(q, k, v, block_q=BLOCK, block_kv=BLOCK, **kw)
        return dot_product_attention(q, k, v, implementation="xla", **kw)

    out, vjp = jax.vjp(attend, q, k, v)
    return out, vjp(ct)


CASES = {
    "dense": dict(),
    "banded": dict(window=64),
    "packed_banded": dict(window=100, packed=True),
}


@pytest.mark.parametrize("case", CASES)
def test_splash_equals_xla_forward_and_gradients(case):
    """Causal dense, GPT-3's band narrower than the sequence, and packed documents: same output and dq, dk, dv."""
    kw = dict(CASES[case])
    if kw.pop("packed", False):
        kw["segment_ids"] = _packed(1)
    q, k, v, ct = _qkv(1, n=2)
    out, grads = jax.jit(lambda *a: _out_and_grads("splash", *a, **kw))(q, k, v, ct)
    ref_out, ref_grads = _out_and_grads("xla", q, k, v, ct, **kw)
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    for name, g, ref in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, ref, atol=2e-5, rtol=1e-4, err_msg=f"d{name}")
    # The case is not vacuous: its mask changes the result against plain causal attention.
    if kw:
        dense = dot_product_attention(q, k, v, implementation="xla")
        assert float(jnp.max(jnp.abs(dense - ref_out))) > 1e-2


def test_splash_pads_sequences_that_are_not_whole_tiles():
    """A 200-token prompt (evaluation, prefill) runs in 256-token tiles; the padding is invisible to it."""
    q, k, v, _ = _qkv(1, n=1, t=200)
    segment_ids = _packed(1, t=200)
    out = jax.jit(splash.splash_attention, static_argnames=("window", "block_q", "block_kv"))(
        q, k, v, segment_ids=segment_ids, window=64, block_q=512, block_kv=BLOCK
    )
    ref = dot_product_attention(q, k, v, segment_ids=segment_ids, window=64, implementation="xla")
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert splash.padded_length(200, 512, BLOCK) == (256, 256, 128)


def test_tiles_must_be_whole_lanes():
    with pytest.raises(ValueError, match="multiple of 128"):
        splash.padded_length(T, 64, BLOCK)


def _gpt3_cfg(impl: str, **kw) -> GPTConfig:
    """A tiny GPT-3: a dense layer then a banded one (window 64 < T)."""
    base = dict(vocab_size=97, block_size=T, n_layer=2, n_head=2, d_model=32, arch="gpt3", attention="alternating")
    base.update(local_window=64, dropout=0.0, attn_dropout=0.0, attention_impl=impl)
    return GPTConfig(**{**base, **kw})


def _loss_and_grads(cfg: GPTConfig, params, tokens, segment_ids):
    def loss(params):
        logits = GPT(cfg).apply({"params": params}, tokens[:, :-1], segment_ids=segment_ids[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.slow
def test_gpt3_with_splash_equals_xla():
    """The whole model (dense and banded layers, packed documents): the loss and every parameter's gradient."""
    tokens = jax.random.randint(jax.random.key(1), (1, T + 1), 0, 97)
    segment_ids = jnp.concatenate([_packed(1), jnp.zeros((1, 1), jnp.int32)], axis=1)
    xla_cfg = _gpt3_cfg("xla")
    params = GPT(xla_cfg).init(jax.random.key(0), tokens[:, :-1])["params"]
    params = mesh_lib.strip_annotations(params)
    loss, grads = _loss_and_grads(_gpt3_cfg("splash"), params, tokens, segment_ids)
    ref_loss, ref_grads = _loss_and_grads(xla_cfg, params, tokens, segment_ids)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for (path, g), ref in zip(jax.tree.leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, ref, atol=1e-4, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_gpt3_scanned_and_rematerialised_on_the_mesh_equals_xla():
    """Scanned layer groups with remat, on the 2 x 2 x 2 mesh: splash's logits equal XLA's on one device."""
    tokens = jax.random.randint(jax.random.key(2), (4, T), 0, 97)
    segment_ids = _packed(4)
    splash_cfg = _gpt3_cfg("splash", scan_layers=True, remat="dots_no_batch")
    params = mesh_lib.strip_annotations(GPT(splash_cfg).init(jax.random.key(0), tokens)["params"])
    ref = GPT(_gpt3_cfg("xla", scan_layers=True)).apply({"params": params}, tokens, segment_ids=segment_ids)
    cfg = config_lib.default().mesh
    cfg.data, cfg.fsdp, cfg.tensor = 2, 2, 2
    with mesh_lib.activation_rules(mesh_lib.make_mesh(cfg, jax.devices()[:8])):
        logits = jax.jit(lambda p: GPT(splash_cfg).apply({"params": p}, tokens, segment_ids=segment_ids))(params)
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)


def test_sharded_splash_equals_single_device():
    """On the data=2 x fsdp=2 x tensor=2 mesh each device runs the kernel on 1 sequence and 1 head of 4 x 2."""
    q, k, v, ct = _qkv(4, n=2, seed=3)
    segment_ids = _packed(4)
    kw = dict(segment_ids=segment_ids, window=64)

    def run(q, k, v, ct):
        return _out_and_grads("splash", q, k, v, ct, **kw)

    ref_out, ref_grads = jax.jit(run)(q, k, v, ct)
    cfg = config_lib.default().mesh
    cfg.data, cfg.fsdp, cfg.tensor = 2, 2, 2
    mesh = mesh_lib.make_mesh(cfg, jax.devices()[:8])
    with mesh_lib.activation_rules(mesh):
        lowered = jax.jit(run).lower(q, k, v, ct)
        out, grads = jax.jit(run)(q, k, v, ct)
    assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
    np.testing.assert_allclose(out, ref_out, atol=1e-6)
    for g, ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, ref, atol=1e-6)


def test_shard_map_spec_follows_the_logical_rules():
    cfg = config_lib.default().mesh
    cfg.data, cfg.fsdp, cfg.tensor = 2, 2, 2
    mesh = mesh_lib.abstract_mesh(cfg, 8)
    spec = mesh_lib.shard_map_spec(mesh, splash.Q_AXES, (4, 2, T, 16))
    assert tuple(spec) == (("data", "fsdp"), "tensor", None, None)
    # A batch of 1 cannot split: it stays whole on every device.
    assert tuple(mesh_lib.shard_map_spec(mesh, splash.Q_AXES, (1, 2, T, 16)))[0] is None


def test_attention_dropout_with_splash_is_a_config_error():
    c = config_lib.default()
    c.model.attention_impl = "splash"
    with pytest.raises(ConfigError, match="attn_dropout"):
        config_lib.validate(c)
    c.model.attn_dropout = 0.0
    config_lib.validate(c)
    q, k, v, _ = _qkv(1, n=1, t=8)
    with pytest.raises(ConfigError, match="attn_dropout"):
        dot_product_attention(q, k, v, dropout_rate=0.1, dropout_rng=jax.random.key(0), implementation="splash")


def test_auto_is_xla_on_cpu():
    """`auto` runs the splash kernel only on TPUs; on this CPU it is JAX's own attention."""
    assert not splash.on_tpu()
    q, k, v, _ = _qkv(1, n=1, t=8)
    auto = jax.make_jaxpr(lambda q, k, v: dot_product_attention(q, k, v))(q, k, v)
    assert "pallas_call" not in str(auto)
    forced = jax.make_jaxpr(lambda q, k, v: dot_product_attention(q, k, v, implementation="splash"))(q, k, v)
    assert "pallas_call" in str(forced)


def test_auto_picks_splash_on_tpus_cudnn_where_it_applies_on_gpus_and_xla_elsewhere():
    from gptx.models.attention import auto_implementation

    assert auto_implementation("tpu", jnp.float32, 64, packed=True) == "splash"
    assert auto_implementation("gpu", jnp.bfloat16, 64, packed=False) == "cudnn"
    assert auto_implementation("gpu", jnp.float16, 128, packed=False) == "cudnn"
    assert auto_implementation("gpu", jnp.float32, 64, packed=False) is None  # cuDNN's kernel is 16-bit only
    assert auto_implementation("gpu", jnp.bfloat16, 256, packed=False) is None  # head size over its limit
    assert auto_implementation("gpu", jnp.bfloat16, 60, packed=False) is None
    assert auto_implementation("gpu", jnp.bfloat16, 64, packed=True) is None  # packed rows: a dense mask
    assert auto_implementation("cpu", jnp.bfloat16, 64, packed=False) is None


def test_auto_on_a_cpu_is_xlas_attention():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 16, 2, 8)) for i in range(3))
    assert splash.target_platform() == "cpu"
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
    np.testing.assert_array_equal(np.asarray(dot_product_attention(q, k, v)), np.asarray(want))
