"""KV-cache decoding: the cache reproduces the full forward pass; sampling settings do what they say."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from gptx import mesh as mesh_lib
from gptx import sample
from gptx.models.gpt import GPT, GPTConfig, init_cache

PROMPTS = [[1, 5, 9, 13, 7], [1, 22], [1, 3, 3, 40]]  # different lengths: left padding matters


def _model(**overrides):
    cfg = tiny_config(vocab_size=64, block_size=32, n_layer=2, d_model=32, n_head=4, **overrides)
    model = GPT(GPTConfig.from_config(cfg.model))
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    # Larger weights than the init's make the logits peaky enough for greedy ties to be impossible.
    params = jax.tree.map(lambda x: x * 3.0, mesh_lib.strip_annotations(params))
    return model, params


def _full_logits(model, params, tokens, mask):
    """Brute force: the whole (left-padded) sequence through the model without a cache."""
    return model.apply(
        {"params": params},
        jnp.asarray(tokens),
        sample.positions_from_mask(jnp.asarray(mask)),
        jnp.asarray(mask, jnp.int32),  # padding is segment 0, the text segment 1
    )


@pytest.mark.parametrize(
    "overrides",
    [{}, {"arch": "gpt1"}, {"arch": "gpt3", "attention": "alternating", "local_window": 3, "scan_layers": True}],
    ids=["gpt2", "gpt1", "gpt3-banded-scanned"],
)
def test_cached_logits_equal_the_full_forward_at_every_step(overrides):
    model, params = _model(**overrides)
    tokens, mask = sample.left_pad(PROMPTS)
    b, p = tokens.shape
    extra = np.random.default_rng(0).integers(4, 64, (b, 6)).astype(np.int32)  # tokens appended one at a time
    s = p + extra.shape[1]
    kv_mask = np.zeros((b, s), bool)
    kv_mask[:, :p] = mask
    prefill = jax.jit(
        lambda tok, pos, cache, m: model.apply({"params": params}, tok, pos, cache=cache, cache_index=0, kv_mask=m)
    )
    step_fn = jax.jit(
        lambda tok, pos, cache, i, m: model.apply({"params": params}, tok, pos, cache=cache, cache_index=i, kv_mask=m)
    )
    logits, cache = prefill(tokens, sample.positions_from_mask(mask), init_cache(model.cfg, b, s), kv_mask)
    steps = [logits[:, -1]]
    for i in range(extra.shape[1]):
        kv_mask[:, p + i] = True
        step, cache = step_fn(extra[:, i : i + 1], (mask.sum(1) + i)[:, None], cache, p + i, kv_mask)
        steps.append(step[:, 0])
    full = _full_logits(model, params, np.concatenate([tokens, extra], 1), kv_mask)
    np.testing.assert_allclose(np.stack(steps, 1), full[:, p - 1 :], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cache_segment", [0, 3], ids=["one-loop", "growing-cache"])
def test_greedy_decode_equals_argmax_of_the_full_forward_with_its_logprobs(cache_segment):
    model, params = _model()
    tokens, mask = sample.left_pad(PROMPTS)
    sampling = sample.SamplingConfig(max_new_tokens=13, temperature=0.0, cache_segment=cache_segment)
    out = sample.decode(model, params, tokens, mask, jax.random.key(0), sampling)
    # Greedy decoding, teacher-forced on its own output, must pick the argmax at every step.
    seq = np.concatenate([tokens, np.asarray(out.tokens)], 1)
    seq_mask = np.concatenate([mask, np.ones(out.tokens.shape, bool)], 1)
    logp = np.asarray(jax.nn.log_softmax(_full_logits(model, params, seq, seq_mask)))[:, tokens.shape[1] - 1 : -1]
    np.testing.assert_array_equal(out.tokens, logp.argmax(-1))
    np.testing.assert_allclose(
        out.logprobs, np.take_along_axis(logp, np.asarray(out.tokens)[..., None], -1)[..., 0], atol=1e-4
    )
    assert out.mask.all()


def test_decoding_segments_double_and_end_at_the_budget():
    assert sample.segment_bounds(13, 3) == (3, 6, 12, 13)
    assert sample.segment_bounds(128, 32) == (32, 64, 128)
    assert sample.segment_bounds(20, 32) == (20,)
    assert sample.segment_bounds(20, 0) == (20,)


def test_a_left_padded_prompt_decodes_as_it_does_alone():
    model, params = _model()
    sampling = sample.SamplingConfig(max_new_tokens=6, temperature=1.0, seed=3)
    together = sample.generate(model, params, PROMPTS, sampling)
    alone = sample.generate(model, params, PROMPTS[:1], sampling).tokens
    # Alone, prompt i is row 0, so the per-row keys differ; the batch-size invariance is per prompt index.
    by_index = sample.generate(model, params, PROMPTS, sampling, batch_size=1)
    assert together.tokens == by_index.tokens
    np.testing.assert_allclose(np.concatenate(together.logprobs), np.concatenate(by_index.logprobs), atol=1e-5)
    assert alone[0] == together.tokens[0]  # row 0 has the same key either way


def test_same_seed_same_samples_other_seed_other_samples():
    model, params = _model()
    run = lambda seed: sample.generate(model, params, PROMPTS, sample.SamplingConfig(16, seed=seed)).tokens  # noqa: E731
    assert run(0) == run(0)
    assert run(0) != run(1)


def test_top_k_one_and_a_tiny_nucleus_are_greedy():
    model, params = _model()
    greedy = sample.generate(model, params, PROMPTS, sample.SamplingConfig(8, temperature=0.0)).tokens
    assert sample.generate(model, params, PROMPTS, sample.SamplingConfig(8, top_k=1, seed=5)).tokens == greedy
    assert sample.generate(model, params, PROMPTS, sample.SamplingConfig(8, top_p=1e-6, seed=5)).tokens == greedy


def test_filter_logits_keeps_the_brute_force_top_k_and_nucleus():
    logits = jnp.log(jnp.asarray([0.05, 0.4, 0.1, 0.3, 0.15]))
    kept = lambda x: set(np.flatnonzero(np.isfinite(np.asarray(x))).tolist())  # noqa: E731
    assert kept(sample.filter_logits(logits, 2, 1.0)) == {1, 3}
    # Nucleus 0.75: 0.4 + 0.3 = 0.7 < 0.75, so the next most likely (0.15) joins; 0.85 >= 0.75 stops there.
    assert kept(sample.filter_logits(logits, 0, 0.75)) == {1, 3, 4}
    assert kept(sample.filter_logits(logits, 0, 0.7)) == {1, 3}


def test_sampling_frequencies_follow_the_tempered_distribution():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.2]]))
    keys = jax.random.split(jax.random.key(0), 20000)
    cfg = sample.SamplingConfig(temperature=0.5)
    tokens, _ = jax.vmap(lambda k: sample.choose(logits, jax.random.uniform(k, (1,)), cfg))(keys)
    freq = np.bincount(np.asarray(tokens).ravel(), minlength=3) / tokens.size
    want = np.array([0.5, 0.3, 0.2]) ** 2
    np.testing.assert_allclose(freq, want / want.sum(), atol=0.015)


def test_rows_stop_after_eos_and_pad_the_rest():
    model, params = _model()
    greedy = sample.generate(model, params, PROMPTS, sample.SamplingConfig(8, temperature=0.0)).tokens
    eos = greedy[0][2]  # a token row 0 emits third: make it the EOS
    out = sample.generate(model, params, PROMPTS, sample.SamplingConfig(8, temperature=0.0, eos_id=eos))
    for row, full in zip(out.tokens, greedy, strict=True):
        want = full[: full.index(eos) + 1] if eos in full else full
        assert row == want


def test_stop_strings_cut_the_text_and_the_tokens():
    class CharTokenizer:  # token t is the character chr(ord("a") + t % 26)
        def decode(self, ids):
            return "".join(chr(ord("a") + t % 26) for t in ids)

    model, params = _model()
    tok = CharTokenizer()
    full = sample.generate(model, params, PROMPTS, sample.SamplingConfig(8, temperature=0.0), tokenizer=tok)
    stop = full.texts[1][3:5]
    out = sample.generate(
        model, params, PROMPTS, sample.SamplingConfig(8, temperature=0.0, stop=(stop,)), tokenizer=tok
    )
    for text, tokens, whole in zip(out.texts, out.tokens, full.texts, strict=True):
        assert stop not in text and whole.startswith(text)
        if stop in whole:
            assert text == whole[: whole.index(stop)] and tok.decode(tokens).endswith(stop)


def test_too_long_and_empty_prompts_are_refused():
    model, params = _model()
    with pytest.raises(ValueError, match="exceed the context"):
        sample.generate(model, params, [[1] * 30], sample.SamplingConfig(8))
    with pytest.raises(ValueError, match="at least one token"):
        sample.generate(model, params, [[1], []], sample.SamplingConfig(8))


def test_sharded_decoding_equals_single_device():
    model, params = _model()
    cfg = tiny_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    sharded = jax.device_put(params, mesh_lib.tree_shardings(mesh, abstract))
    sampling = sample.SamplingConfig(8, temperature=1.0, seed=1, cache_segment=0)
    one = sample.generate(model, params, PROMPTS, sampling)
    # 3 prompts padded to 4 rows; the sharded cache also grows between segments of 3, 6 and 8 tokens.
    grown = dataclasses.replace(sampling, cache_segment=3)
    many = sample.generate(model, sharded, PROMPTS, grown, mesh=mesh)
    assert one.tokens == many.tokens
    np.testing.assert_allclose(np.concatenate(one.logprobs), np.concatenate(many.logprobs), atol=1e-4)


def test_inverse_cdf_samples_follow_the_distribution_and_never_draw_a_filtered_token():
    probs = np.array([0.5, 0.0, 0.3, 0.2, 0.0])
    logits = jnp.log(jnp.asarray(probs))[None].repeat(4, 0) + jnp.arange(4.0)[:, None]  # a shift per row
    keys = jax.random.split(jax.random.key(3), 50000)
    tokens, logprobs = jax.vmap(lambda k: sample.inverse_cdf_sample(logits, jax.random.uniform(k, (4,))))(keys)
    freq = np.bincount(np.asarray(tokens).ravel(), minlength=5) / tokens.size
    np.testing.assert_allclose(freq, probs, atol=0.01)  # 200,000 draws: ~0.001 standard error
    assert freq[1] == freq[4] == 0.0
    want = np.log(probs[np.asarray(tokens)])
    np.testing.assert_allclose(np.asarray(logprobs), want, rtol=1e-5)
    again, _ = jax.vmap(lambda k: sample.inverse_cdf_sample(logits, jax.random.uniform(k, (4,))))(keys)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(tokens))  # a uniform is one draw


def test_inverse_cdf_sampling_by_blocks_equals_the_float64_cumulative_sum():
    """The blocked search (blocks of about sqrt(V) tokens) picks the first token whose float64 cumulative
    probability reaches 1 - u, for vocabularies that fill their last block or leave it partly empty, with whole
    blocks of zero probability; only targets within float32 rounding of a boundary may differ."""
    rng = np.random.default_rng(0)
    for v in (5, 64, 1000, 50257):
        logits = rng.normal(size=(8, v)).astype(np.float32) * 3
        logits[:, rng.random(v) < 0.3] = -np.inf  # scattered zeros
        logits[:, : min(v // 2, 300)] = -np.inf  # and whole zero blocks at the front
        logits[:, -1] = 0.0  # one token always possible
        u = rng.random((64, 8)).astype(np.float32)
        tokens = np.stack([np.asarray(sample.inverse_cdf_sample(jnp.asarray(logits), jnp.asarray(x))[0]) for x in u])
        probs = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
        cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), axis=-1)  # [8, V]
        target = 1.0 - u.astype(np.float64)  # [64, 8]
        want = np.stack([[np.searchsorted(cdf[r], t[r]) for r in range(8)] for t in target])
        rows = np.arange(8)
        below = np.where(want > 0, cdf[rows, np.maximum(want - 1, 0)], 0.0)
        gap = np.minimum(np.abs(cdf[rows, np.minimum(want, v - 1)] - target), np.abs(below - target))
        agree = (tokens == want) | (gap < 1e-5)
        assert agree.all(), (v, np.argwhere(~agree)[:5])
        assert np.isfinite(logits[np.arange(8), tokens]).all()  # never a token of probability 0


def test_a_sampled_tokens_logprob_is_that_of_the_tempered_distribution():
    logits = jax.random.normal(jax.random.key(1), (32, 300)) * 3
    for top_p in (1.0, 0.5):
        cfg = sample.SamplingConfig(max_new_tokens=1, temperature=0.7, top_p=top_p)
        tokens, logprobs = sample.choose(logits, jax.random.uniform(jax.random.key(2), (32,)), cfg)
        ref = jax.nn.log_softmax(logits / 0.7)[jnp.arange(32), tokens]
        np.testing.assert_allclose(np.asarray(logprobs), np.asarray(ref), rtol=1e-5, atol=1e-6)
