"""Vocab tiling: chunked log-probabilities equal the full logits' (values and gradients), and the compiled LM
gradient's temporaries stop scaling with tokens x vocab."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gptx.models import GPT, GPTConfig, vocab_tiling
from gptx.train import lm


def _full_logprobs(hidden, wte, targets, temperature=1.0):
    """The reference: every logit at once, optax's cross-entropy."""
    logits = jnp.einsum("btd,vd->btv", hidden, wte) / temperature
    return -optax.softmax_cross_entropy_with_integer_labels(logits, targets), logits


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_chunked_logprobs_and_gradients_equal_the_full_logits(chunk):
    b, t, d, v = 2, 13, 8, 97  # t not a multiple of the chunk: the padded tail must not leak in
    kh, kw, ky, kg = jax.random.split(jax.random.key(0), 4)
    hidden = jax.random.normal(kh, (b, t, d))
    wte = jax.random.normal(kw, (v, d))
    targets = jax.random.randint(ky, (b, t), 0, v)
    weights = jax.random.uniform(kg, (b, t))

    logp, greedy, entropy = vocab_tiling.token_logprobs(
        hidden, wte, targets, chunk=chunk, temperature=0.7, entropy=True
    )
    ref, logits = _full_logprobs(hidden, wte, targets, 0.7)
    np.testing.assert_allclose(logp, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(greedy, jnp.argmax(logits, -1) == targets)
    p = jax.nn.softmax(logits, -1)
    np.testing.assert_allclose(entropy, -jnp.sum(p * jnp.log(p), -1), atol=1e-5, rtol=1e-5)  # -sum p log p

    def loss(fn):
        return lambda h, w: jnp.sum(fn(h, w) * weights)

    tiled = loss(lambda h, w: vocab_tiling.token_logprobs(h, w, targets, chunk=chunk, temperature=0.7)[0])
    full = loss(lambda h, w: _full_logprobs(h, w, targets, 0.7)[0])
    for got, want in zip(jax.grad(tiled, (0, 1))(hidden, wte), jax.grad(full, (0, 1))(hidden, wte), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _gpt(vocab: int, block: int, chunk: int) -> GPT:
    cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, d_model=32, dropout=0.0)
    return GPT(dataclasses.replace(cfg, attn_dropout=0.0, logits_chunk=chunk))


def _batch(b: int, t: int, vocab: int) -> dict:
    tokens = jax.random.randint(jax.random.key(1), (b, t + 1), 0, vocab)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "positions": jnp.broadcast_to(jnp.arange(t), (b, t)),
        "segment_ids": jnp.ones((b, t), jnp.int32),
        "weights": jnp.ones((b, t), jnp.float32),
    }


def test_lm_loss_with_vocab_tiling_equals_the_model_logits():
    vocab, t = 211, 24
    full, tiled = _gpt(vocab, t, 0), _gpt(vocab, t, 7)
    batch = _batch(2, t, vocab)
    params = full.init(jax.random.key(0), batch["inputs"])["params"]
    logits = full.apply({"params": params}, batch["inputs"])  # the model's own head: an independent path
    ref = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]))
    total, _ = lm.lm_loss_sum(params, batch, None, tiled)
    np.testing.assert_allclose(total, ref, rtol=1e-5)
    g_full = jax.grad(lambda p: lm.lm_loss_sum(p, batch, None, full)[0])(params)
    g_tiled = jax.grad(lambda p: lm.lm_loss_sum(p, batch, None, tiled)[0])(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), g_tiled, g_full)


def _temp_bytes(model: GPT, b: int, t: int) -> int:
    batch = _batch(b, t, model.cfg.vocab_size)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), batch["inputs"])["params"])
    grad = jax.jit(jax.grad(lambda p, x: lm.lm_loss_sum(p, x, None, model)[0]))
    return grad.lower(params, batch).compile().memory_analysis().temp_size_in_bytes


def test_compiled_gradient_temporaries_do_not_scale_with_tokens_times_vocab():
    # Vary the vocabulary at a fixed length: attention's [T, T] temporaries stay the same, the logits do not.
    b, t, chunk = 2, 128, 16
    small, large = 2048, 8192
    extra_logits = b * t * (large - small) * 4  # the f32 [B, T, V] logits' growth
    full = {v: _temp_bytes(_gpt(v, t, 0), b, t) for v in (small, large)}
    tiled = {v: _temp_bytes(_gpt(v, t, chunk), b, t) for v in (small, large)}
    assert full[large] - full[small] >= extra_logits  # at least one [B, T, V] array lives across the pass
    # With tiling the growth is a few [B, chunk, V] arrays (a chunk's logits and their gradient), T/chunk = 8
    # times less than the logits.
    extra_chunk = b * chunk * (large - small) * 4
    assert tiled[large] - tiled[small] <= 3 * extra_chunk, (tiled, full)
    assert tiled[large] < full[large] / 2, (tiled, full)


def test_finetune_aux_lm_logprobs_equal_the_full_logits():
    from gptx.models import heads
    from gptx.train import finetune

    b, s, t, vocab = 2, 2, 12, 101
    cfg = dataclasses.replace(_gpt(vocab, t, 5).cfg)
    model = heads.FinetuneModel(cfg, (heads.TaskHead("pair", heads.SUM, 3),))
    tokens = jax.random.randint(jax.random.key(2), (b, s, t), 0, vocab)
    args = (tokens, jnp.ones((b, s, t), jnp.int32), jnp.full((b, s), t - 1), jnp.ones((b, s)), jnp.zeros((b, 1), int))
    params = model.init(jax.random.key(0), *args)["params"]
    _, hidden = model.apply({"params": params}, *args, with_lm=True)
    got = finetune.lm_logprobs(model, params, hidden, tokens)
    logits = jnp.einsum("bstd,vd->bstv", hidden, params["gpt"]["wte"].value)  # every logit at once
    want = -optax.softmax_cross_entropy_with_integer_labels(logits[:, :, :-1], tokens[..., 1:])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_first_argmax_equals_jnp_argmax_with_ties_infinities_and_nans():
    from gptx.models.vocab_tiling import first_argmax

    rng = np.random.default_rng(0)
    x = rng.integers(-3, 3, (64, 257)).astype(np.float32)  # many ties
    x[1] = -np.inf
    x[2, 5:] = np.inf
    x[3, [7, 100]] = np.nan
    x[4, :] = np.nan
    np.testing.assert_array_equal(np.asarray(first_argmax(jnp.asarray(x))), np.argmax(x, axis=-1))
