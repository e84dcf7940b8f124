"""Properties of the GPT decoder family from the papers: causality, packing, banded attention, variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from gptx.models import GPT, GPTConfig
from gptx.models.attention import dot_product_attention

SMALL = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, d_model=32, dropout=0.0, attn_dropout=0.0)
VARIANTS = {
    "gpt1": dict(arch="gpt1"),
    "gpt2": dict(arch="gpt2"),
    "gpt3": dict(arch="gpt3", attention="alternating", local_window=4),
    "gpt3_scan_remat": dict(arch="gpt3", attention="alternating", local_window=4, scan_layers=True, remat="full"),
}


def init(cfg: GPTConfig, t: int = 16):
    model = GPT(cfg)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((2, t), jnp.int32))["params"])
    return model, params


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_future_tokens_never_change_past_logits(variant):
    model, params = init(GPTConfig(**SMALL, **VARIANTS[variant]))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 97)
    base = model.apply({"params": params}, tokens)
    for t in (3, 9, 15):
        changed = tokens.at[:, t].set((tokens[:, t] + 1) % 97)
        out = model.apply({"params": params}, changed)
        np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6)
        assert not np.allclose(out[:, t], base[:, t]), "the changed token must change its own logits"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_packed_segments_do_not_see_each_other(variant):
    """Two documents packed in one row give the same logits as each document alone."""
    model, params = init(GPTConfig(**SMALL, **VARIANTS[variant]))
    a = jax.random.randint(jax.random.key(2), (1, 6), 0, 97)
    b = jax.random.randint(jax.random.key(3), (1, 10), 0, 97)
    packed = jnp.concatenate([a, b], axis=1)
    segment_ids = jnp.asarray([[1] * 6 + [2] * 10])
    positions = jnp.asarray([list(range(6)) + list(range(10))])
    out = model.apply({"params": params}, packed, positions, segment_ids)
    np.testing.assert_allclose(out[:, :6], model.apply({"params": params}, a), atol=1e-5)
    np.testing.assert_allclose(out[:, 6:], model.apply({"params": params}, b), atol=1e-5)


def _reference_attention(q, k, v, segment_ids, window):
    """Brute force over every (query, key) pair in numpy."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    out = np.zeros_like(q)
    for bi in range(b):
        for ni in range(n):
            for i in range(t):
                keys = [
                    j
                    for j in range(t)
                    if j <= i
                    and (window is None or i - j < window)
                    and (segment_ids is None or segment_ids[bi, j] == segment_ids[bi, i])
                ]
                s = np.array([q[bi, i, ni] @ k[bi, j, ni] / np.sqrt(h) for j in keys])
                p = np.exp(s - s.max())
                p /= p.sum()
                out[bi, i, ni] = sum(pj * v[bi, j, ni] for pj, j in zip(p, keys, strict=True))
    return out


@pytest.mark.parametrize("window", [None, 1, 3])
@pytest.mark.parametrize("packed", [False, True])
def test_attention_matches_brute_force(window, packed):
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 9, 2, 4)) for i in range(3))
    seg = np.asarray([[1, 1, 1, 2, 2, 2, 2, 3, 3], [1] * 9]) if packed else None
    got = dot_product_attention(q, k, v, segment_ids=None if seg is None else jnp.asarray(seg), window=window)
    np.testing.assert_allclose(got, _reference_attention(q, k, v, seg, window), atol=1e-5)


def test_attention_dropout_path_equals_fused_path_at_rate_zero_limit():
    """The explicit-softmax path (used for attention dropout) computes the same attention."""
    from gptx.models.attention import _attention_with_dropout

    q, k, v = (jax.random.normal(jax.random.key(i), (2, 9, 2, 4)) for i in range(3))
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 3, 3], [1] * 9])
    fused = dot_product_attention(q, k, v, segment_ids=seg, window=3)
    explicit = _attention_with_dropout(q, k, v, seg, 3, 1e-9, jax.random.key(0))
    np.testing.assert_allclose(fused, explicit, atol=1e-5)


def test_banded_layer_forgets_beyond_its_window():
    """A single banded layer: a token more than `window` back has no influence; one inside does."""
    dense = GPTConfig(**SMALL, arch="gpt2", attention="dense")
    band = GPTConfig(**SMALL, arch="gpt3", attention="alternating", local_window=4)
    assert [band.window(i) for i in range(4)] == [None, 4, None, 4] and dense.window(1) is None
    from gptx.models.gpt import Block

    block = Block(band, window=band.window(1))
    x = jax.random.normal(jax.random.key(0), (1, 12, 32))
    variables = block.init(jax.random.key(1), x, None)
    base, _ = block.apply(variables, x, None)
    bump = jax.random.normal(jax.random.key(2), (32,))
    far, _ = block.apply(variables, x.at[:, 2].add(bump), None)  # 9 - 2 = 7 >= 4: outside the band of t=9
    near, _ = block.apply(variables, x.at[:, 7].add(bump), None)  # 9 - 7 = 2 < 4: inside
    assert np.allclose(far[:, 9], base[:, 9], atol=1e-6)
    assert not np.allclose(near[:, 9], base[:, 9], atol=1e-3)


def test_gpt1_is_post_ln_and_gpt2_pre_ln_with_final_norm():
    _, p1 = init(GPTConfig(**SMALL, arch="gpt1"))
    _, p2 = init(GPTConfig(**SMALL, arch="gpt2"))
    assert "ln_f" not in p1 and "ln_f" in p2
    # GPT-2 scales residual projections by 1/sqrt(2 * n_layer) at init; GPT-1 does not.
    std1 = float(np.std(p1["h_0"]["mlp"]["proj_kernel"]))
    std2 = float(np.std(p2["h_0"]["mlp"]["proj_kernel"]))
    assert std1 == pytest.approx(0.02, rel=0.1) and std2 == pytest.approx(0.02 / 2.0, rel=0.1)


def test_scanned_layers_equal_unrolled_layers():
    cfg = GPTConfig(**SMALL, arch="gpt3", attention="alternating", local_window=4)
    model, params = init(cfg)
    scanned_model, scanned = init(
        GPTConfig(**SMALL, arch="gpt3", attention="alternating", local_window=4, scan_layers=True)
    )
    # Stack h_0 (dense) and h_1 (banded) into the scanned layout: layers/layer_{0,1} with a leading axis.
    stacked = dict(scanned)
    stacked["layers"] = {
        "layer_0": jax.tree.map(lambda x: x[None], params["h_0"]),
        "layer_1": jax.tree.map(lambda x: x[None], params["h_1"]),
    }
    for name in ("wte", "wpe", "ln_f"):
        stacked[name] = params[name]
    assert jax.tree.structure(stacked) == jax.tree.structure(scanned)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 97)
    np.testing.assert_allclose(
        scanned_model.apply({"params": stacked}, tokens), model.apply({"params": params}, tokens), atol=1e-5
    )


def test_bf16_compute_keeps_f32_params_and_close_logits():
    model32, params = init(GPTConfig(**SMALL))
    model16 = GPT(GPTConfig(**SMALL, dtype="bfloat16"))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 97)
    out16 = model16.apply({"params": params}, tokens)
    assert out16.dtype == jnp.float32  # logits are upcast for the loss
    np.testing.assert_allclose(out16, model32.apply({"params": params}, tokens), atol=0.05)


def test_remat_changes_nothing_numerically():
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 97)
    model, params = init(GPTConfig(**SMALL))
    remat_model = GPT(GPTConfig(**SMALL, remat="full"))

    def loss(m, p):
        return jnp.mean(m.apply({"params": p}, tokens) ** 2)

    g1 = jax.grad(lambda p: loss(model, p))(params)
    g2 = jax.grad(lambda p: loss(remat_model, p))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)


def test_dropout_is_active_in_training_only():
    model, params = init(GPTConfig(**{**SMALL, "dropout": 0.5, "attn_dropout": 0.5}))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 97)
    eval_a = model.apply({"params": params}, tokens)
    eval_b = model.apply({"params": params}, tokens)
    train = model.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(5)})
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(train, eval_a)
