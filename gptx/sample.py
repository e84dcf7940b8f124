"""Batched autoregressive decoding over an explicit KV cache.

`decode` is one jit-compiled program: a prefill of the left-padded prompts writes their keys and values into
the cache, then `while_loop`s append one token per step until every row has stopped or `max_new_tokens` are
out; the cache grows between loops (`segment_bounds`), so early steps read a short cache. Positions come from
the prompt mask, so a left-padded prompt sees the same positions as the unpadded one. Each row samples with
its own key (`fold_in(row key, step)`), so a prompt's continuation does not depend on the batch it was decoded
in. `generate` is the host-side wrapper: it pads and batches token lists, applies stop strings and returns
Python lists; `generate_with_images` decodes prompts that show images (gptx/models/multimodal.py) through it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh

from gptx import mesh as mesh_lib
from gptx.errors import ConfigError
from gptx.models.attention import token_einsum
from gptx.models.gpt import GPT, grow_cache, init_cache
from gptx.models.multimodal import MultimodalGPT, place_patches
from gptx.models.vocab_tiling import first_argmax


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. Hashable: `decode` compiles once per distinct setting."""

    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # keep the k most likely tokens; 0: off
    top_p: float = 1.0  # keep the smallest set of tokens with this much probability (nucleus); 1: off
    eos_id: int | None = None  # a row stops after emitting it
    stop: tuple[str, ...] = ()  # host-side stop strings (need a tokenizer in `generate`)
    seed: int = 0
    pad_id: int = 0  # written after a row has stopped
    cache_segment: int = 32  # new tokens decoded over the shortest KV cache, later segments double; 0: one loop


def sampling_from_config(c: Any, eos_id: int | None = None, pad_id: int = 0) -> SamplingConfig:
    """SamplingConfig from a `config.sample` section; ConfigError names a bad key."""

    if c.max_new_tokens <= 0:
        raise ConfigError(f"config.sample.max_new_tokens={c.max_new_tokens} must be positive")
    if c.temperature < 0 or c.top_k < 0:
        raise ConfigError("config.sample.temperature and config.sample.top_k must be >= 0")
    if not 0.0 < c.top_p <= 1.0:
        raise ConfigError(f"config.sample.top_p={c.top_p} must be in (0, 1]")
    if isinstance(c.stop, str) or not all(isinstance(s, str) and s for s in c.stop):
        raise ConfigError(f"config.sample.stop={c.stop!r} must be a tuple of non-empty strings")
    return SamplingConfig(
        max_new_tokens=c.max_new_tokens,
        temperature=float(c.temperature),
        top_k=c.top_k,
        top_p=float(c.top_p),
        eos_id=eos_id,
        stop=tuple(c.stop),
        seed=c.seed,
        pad_id=pad_id,
        cache_segment=c.get("cache_segment", SamplingConfig.cache_segment),
    )


class Decoded(NamedTuple):
    """Output of `decode` for B prompts and N = max_new_tokens steps."""

    tokens: jax.Array  # [B, N] int32; pad_id after a row stopped
    logprobs: jax.Array  # [B, N] float32: log softmax(logits / temperature) of the chosen token (T = 1 if greedy)
    mask: jax.Array  # [B, N] bool: True up to and including the first EOS


@dataclasses.dataclass
class Generation:
    """Output of `generate`, one entry per prompt, in the prompts' order."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    texts: list[str] | None = None


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (tokens [B, P] int32, mask [B, P] bool), right-aligned so every row ends at column P - 1."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) :] = p
        mask[i, width - len(p) :] = True
    return tokens, mask


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """[B, T] bool -> [B, T] int32 positions counting real tokens from 0 (padding gets 0)."""
    return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Sets logits [..., V] outside the top-k and outside the top-p nucleus to -inf (the argmax always stays)."""
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above each one
        kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def choose(logits: jax.Array, uniforms: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """Next tokens [B] and their log-probs [B] from logits [B, V], one uniform in [0, 1) per row [B]."""
    if sampling.temperature == 0.0:
        tokens = first_argmax(logits)
        return tokens, _logprob_of(jax.nn.log_softmax(logits), tokens)
    scaled = logits / sampling.temperature
    filtered = filter_logits(scaled, sampling.top_k, sampling.top_p)
    tokens, logprobs = inverse_cdf_sample(filtered, uniforms)
    if sampling.top_k > 0 or sampling.top_p < 1.0:
        # Log-probs of the tempered, unfiltered distribution: what PPO recomputes from the same logits.
        logprobs = _logprob_of(jax.nn.log_softmax(scaled), tokens)
    return tokens, logprobs


def inverse_cdf_sample(logits: jax.Array, uniforms: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One token per row of logits [B, V] drawn from softmax(logits) with one uniform in [0, 1) per row [B], and
    its log-prob [B]: the first token whose cumulative probability reaches 1 - u in (0, 1]. A token of
    probability 0 (a -inf logit) is never drawn.

    One exp per logit instead of the Gumbel trick's random bits and two logs, and no cumulative sum over the
    whole vocabulary: the vocabulary is cut into blocks of about sqrt(V) tokens, the target is found among the
    blocks' running totals, then within its block's running sums ([B, V] work is an exp and a sum).
    """
    b, v = logits.shape
    block = 1 << max(0, math.ceil(math.log2(v) / 2))  # about sqrt(V), a power of two
    top = jnp.max(logits, axis=-1, keepdims=True)
    mass = jnp.exp(logits - top)  # unnormalised probabilities, the largest 1
    blocks = jnp.pad(mass, ((0, 0), (0, -v % block))).reshape(b, -1, block)  # [B, V / block, block]
    block_cdf = jnp.cumsum(jnp.sum(blocks, axis=-1), axis=-1)  # [B, V / block]
    total = block_cdf[:, -1]
    target = (1.0 - uniforms) * total  # in (0, total]
    # The first block whose running total reaches the target: its own total is positive (the running total
    # rose there), so it holds a token of positive mass.
    j = jnp.minimum(jnp.sum(block_cdf < target[:, None], axis=-1), block_cdf.shape[1] - 1)
    before = jnp.where(j > 0, jnp.take_along_axis(block_cdf, jnp.maximum(j - 1, 0)[:, None], axis=1)[:, 0], 0.0)
    within = jnp.cumsum(jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0], axis=-1)  # [B, block]
    # The target inside the block, kept in (0, the block's own sum] against rounding between the two sums.
    rest = jnp.clip(target - before, jnp.finfo(jnp.float32).tiny, within[:, -1])
    tokens = (j * block + jnp.sum(within < rest[:, None], axis=-1)).astype(jnp.int32)
    return tokens, _logprob_of(logits, tokens) - top[:, 0] - jnp.log(total)


def step_uniforms(keys: jax.Array, steps: int) -> jax.Array:
    """The uniforms [steps, B] that sampling draws from, uniform(fold_in(row key, step)) for each row key [B]:
    made in one batched pass before decoding, so a decoding step runs no random-number kernels."""

    def row(key: jax.Array) -> jax.Array:  # [steps]
        return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(jnp.arange(steps))

    return jax.vmap(row, out_axes=1)(keys)


def head_kernel(model: GPT, params: Any) -> jax.Array:
    """The tied output projection as a [D, V] matrix in the compute dtype, made once per decode call: a
    decoding step then runs [B, D] @ [D, V], which XLA:CPU does ~1.5x faster than contracting the [V, D] table
    on its minor axis, and a bfloat16 model reads half the bytes of its float32 table."""
    wte = nn.meta.unbox(params["wte"])
    return nn.with_logical_constraint(wte.T.astype(model.cfg.dtype), (None, "vocab"))


def next_token_logits(model: GPT, head: jax.Array, hidden: jax.Array) -> jax.Array:
    """Float32 logits [B, T, V] of final hidden states [B, T, D] (model.apply(..., return_hidden=True))."""
    logits = token_einsum("btd,dv->btv", hidden, head)
    return nn.with_logical_constraint(logits, ("batch", "length", "act_vocab")).astype(jnp.float32)


def _logprob_of(logp: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def segment_bounds(max_new_tokens: int, first: int) -> tuple[int, ...]:
    """Ends of the decoding segments, in new tokens: first, 2 first, 4 first, ..., max_new_tokens.

    Segment k attends over a cache of prompt + bounds[k] slots. Doubling keeps the number of compiled loops
    logarithmic in the budget while no step reads more than about twice the slots it needs. first <= 0: one
    segment over the whole budget.
    """
    bounds = [min(first, max_new_tokens) if first > 0 else max_new_tokens]
    while bounds[-1] < max_new_tokens:
        bounds.append(min(2 * bounds[-1], max_new_tokens))
    return tuple(bounds)


def prefill(model: GPT, params: Any, prompt_tokens, prompt_mask, cache_len: int, prompt_embeds=None):
    """(next-token logits [B, 1, V] of the last prompt position, KV cache of `cache_len` positions holding the
    prompts, kv_mask [B, cache_len] marking their real tokens) of left-padded prompts [B, P]."""
    b, p = prompt_tokens.shape
    kv_mask = jnp.zeros((b, cache_len), bool).at[:, :p].set(prompt_mask)
    logits, cache = model.apply(
        {"params": params},
        prompt_tokens,
        positions_from_mask(prompt_mask),
        cache=init_cache(model.cfg, b, cache_len),
        cache_index=0,
        kv_mask=kv_mask,
        input_embeds=prompt_embeds,
        last_only=True,
    )
    return logits, cache, kv_mask


@functools.partial(jax.jit, static_argnames=("model", "sampling"))
def decode(
    model: GPT,
    params: Any,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    sampling: SamplingConfig,
    prompt_embeds: jax.Array | None = None,
) -> Decoded:
    """Samples max_new_tokens continuations of left-padded prompts.

    Args:
      model, params: a GPT and its parameters (sharded or not; run under `mesh_lib.activation_rules` for a mesh).
      prompt_tokens: [B, P] int32, left-padded; every row's last column is a real token.
      prompt_mask: [B, P] bool, True at real tokens.
      rng: one key, or a key per row [B] (rows then sample independently of the batch they are in).
      sampling: the static decoding settings.
      prompt_embeds: optional [B, P, D] input embeddings of the prompts (e.g. with image patches in place of
        placeholder tokens, see gptx/models/multimodal.py); the prefill reads them instead of embedding
        prompt_tokens. New tokens are embedded as usual.
    """
    b, p = prompt_tokens.shape
    n = sampling.max_new_tokens
    if p + n > model.cfg.block_size:
        raise ValueError(f"prompt ({p}) + max_new_tokens ({n}) exceed the context {model.cfg.block_size}")
    keys = rng if rng.ndim == 1 else jax.random.split(rng, b)
    prompt_mask = prompt_mask.astype(bool)
    lengths = prompt_mask.sum(axis=1).astype(jnp.int32)  # [B]
    bounds = segment_bounds(n - 1, sampling.cache_segment)  # forward passes: of new tokens 0 .. n - 2
    logits, cache, kv_mask = prefill(model, params, prompt_tokens, prompt_mask, p + bounds[0], prompt_embeds)
    head = head_kernel(model, params)  # outside the loops: transposed once, not at every step
    uniforms = step_uniforms(keys, n) if sampling.temperature > 0 else jnp.zeros((n, b), jnp.float32)

    def emit(i, logits, tokens, logprobs, valid, done):
        """Chooses new token i of the rows that have not stopped; pad_id for those that have."""
        token, logprob = choose(logits, uniforms[i], sampling)
        token = jnp.where(done, sampling.pad_id, token)
        tokens = tokens.at[:, i].set(token)
        logprobs = logprobs.at[:, i].set(jnp.where(done, 0.0, logprob))
        valid = valid.at[:, i].set(~done)
        if sampling.eos_id is not None:
            done = done | (token == sampling.eos_id)
        return token, tokens, logprobs, valid, done

    def body(carry):
        i, cache, kv_mask, logits, *outputs = carry
        token, *outputs = emit(i, logits, *outputs)
        kv_mask = kv_mask.at[:, p + i].set(True)
        hidden, cache = model.apply(
            {"params": params},
            token[:, None],
            (lengths + i)[:, None],
            cache=cache,
            cache_index=p + i,
            kv_mask=kv_mask,
            return_hidden=True,
        )
        step_logits = next_token_logits(model, head, hidden)  # [B, 1, V]
        return i + 1, cache, kv_mask, step_logits[:, 0], *outputs

    carry = (
        jnp.int32(0),
        cache,
        kv_mask,
        logits[:, -1],
        jnp.full((b, n), sampling.pad_id, jnp.int32),
        jnp.zeros((b, n), jnp.float32),
        jnp.zeros((b, n), bool),
        jnp.zeros((b,), bool),
    )
    # One while_loop per segment of new tokens, each over a cache just long enough for it: a decoding step
    # reads the whole cache, so this reads about a quarter less than one loop over the full-length cache.
    for k, stop in enumerate(bounds):
        if k:
            i, cache, kv_mask, *rest = carry
            kv_mask = jnp.pad(kv_mask, ((0, 0), (0, stop - bounds[k - 1])))
            carry = (i, grow_cache(cache, p + stop), kv_mask, *rest)
        carry = jax.lax.while_loop(lambda c, stop=stop: (c[0] < stop) & ~jnp.all(c[-1]), body, carry)
    i, _, _, logits, *outputs = carry
    _, tokens, logprobs, valid, _ = emit(i, logits, *outputs)  # the last token needs no forward pass after it
    return Decoded(tokens, logprobs, valid)


def generate(
    model: GPT,
    params: Any,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    *,
    tokenizer: Any = None,
    batch_size: int = 0,
    mesh: Mesh | None = None,
    embed_prompts: Callable[[np.ndarray, list[int]], jax.Array] | None = None,
) -> Generation:
    """Continuations of token-list prompts, cut after EOS and, with a tokenizer, at the first stop string.

    Prompts are decoded in batches of `batch_size` (0: all at once), each padded to its longest prompt; a
    prompt's continuation is the same in any batch. With a mesh, batches are padded to a multiple of the
    batch-sharding axes and decoded under the mesh's activation rules. Texts (with a tokenizer) end before
    the stop string; tokens and log-probs end with the token that completed it. `embed_prompts(tokens [b, P],
    prompt indices [b])` may supply the prefill's input embeddings [b, P, D] (other modalities).
    """
    if sampling.stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")
    base = jax.random.key(sampling.seed)
    size = batch_size or len(prompts)
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    out = Generation([], [], [] if tokenizer is not None else None)
    rules = mesh_lib.activation_rules(mesh) if mesh is not None else contextlib.nullcontext()
    with rules:
        for start in range(0, len(prompts), size):
            rows = list(range(start, min(start + size, len(prompts))))
            real = len(rows)
            rows += [rows[-1]] * (-real % shards)  # dummy rows so the batch splits over the mesh
            tokens, mask = left_pad([prompts[r] for r in rows], sampling.pad_id)
            keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(rows))  # one key per prompt
            embeds = embed_prompts(tokens, rows) if embed_prompts is not None else None
            result = jax.device_get(decode(model, params, tokens, mask, keys, sampling, embeds))
            for row in range(real):
                _append(out, result, row, sampling, tokenizer)
    return out


def _append(out: Generation, result: Decoded, row: int, sampling: SamplingConfig, tokenizer: Any) -> None:
    n = int(result.mask[row].sum())
    tokens, logprobs = result.tokens[row, :n].tolist(), result.logprobs[row, :n].tolist()
    if tokenizer is None:
        out.tokens.append(tokens)
        out.logprobs.append(logprobs)
        return
    body = tokens[:-1] if sampling.eos_id is not None and tokens and tokens[-1] == sampling.eos_id else tokens
    text, cut = tokenizer.decode(body), len(tokens)
    hits = [text.find(s) for s in sampling.stop if s in text]
    if hits:
        text = text[: min(hits)]
        # The shortest prefix of tokens whose text already holds a stop string.
        cut = next(k for k in range(1, len(body) + 1) if any(s in tokenizer.decode(body[:k]) for s in sampling.stop))
    out.tokens.append(tokens[:cut])
    out.logprobs.append(logprobs[:cut])
    out.texts.append(text)


def generate_with_images(
    model: MultimodalGPT,
    params: dict[str, Any],
    prompts: Sequence[Sequence[int]],
    images: Sequence[Sequence[np.ndarray]],
    sampling: SamplingConfig,
    *,
    batch_size: int = 0,
    mesh: Mesh | None = None,
) -> Generation:
    """Continuations of prompts whose placeholder runs show `images` ([H, W, C] each, in order), decoded by
    `decode` over its KV cache: the prefill reads the multimodal input embeddings, new tokens are text. Returns a
    Generation (tokens cut before EOS, no texts).

    Prompts are left-padded in batches of `batch_size` (0: all at once); with a mesh, batches are padded to a
    multiple of the batch-sharding axes. Each prompt samples with its own key, so results do not depend on
    the batch it is in.
    """
    if any(len(p) < 2 for p in prompts):
        raise ValueError("image prompts need at least two tokens (BOS and an image)")
    vit = model.encoder.cfg
    embed = jax.jit(model.input_embeds)

    def embed_prompts(tokens: np.ndarray, rows: list[int]) -> jax.Array:
        patches = [
            place_patches(t, images[r], model.image_token_id, vit.patch_size, vit.channels)
            for t, r in zip(tokens, rows, strict=True)
        ]
        return embed(params, tokens, np.stack(patches))

    out = generate(
        model.decoder,
        params["decoder"],
        prompts,
        sampling,
        batch_size=batch_size,
        mesh=mesh,
        embed_prompts=embed_prompts,
    )
    for i, toks in enumerate(out.tokens):  # callers get the answer without its EOS
        if sampling.eos_id is not None and toks and toks[-1] == sampling.eos_id:
            out.tokens[i], out.logprobs[i] = toks[:-1], out.logprobs[i][:-1]
    return out
