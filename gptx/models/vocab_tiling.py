"""Next-token log-probabilities without materialising the [tokens x vocab] logits (vocab tiling, as MaxText does).

At GPT-3 shapes (sequence 2048, vocabulary 50,257) the f32 logits of one micro-batch of 8 sequences are 3.3 GB,
kept alive from the forward pass to the backward pass: more than the activations of the rest of a 350M model.
Here the sequence is cut into chunks of `chunk` positions; a `lax.scan` computes each chunk's logits, reduces them
to the two per-token numbers a loss needs (log p(target) and whether the target is the argmax), and drops them.
`jax.checkpoint` on the chunk makes the backward pass recompute that chunk's logits instead of storing them, so
the largest temporary is [B, chunk, V] whatever the sequence length. The price is one more [tokens x D x V]
matmul in the backward pass (about 1/3 of the head's FLOPs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from gptx.models.attention import token_einsum


def first_argmax(logits: jax.Array) -> jax.Array:
    """jnp.argmax over the last axis (the first maximum on ties) as two plain reductions: XLA:CPU runs argmax's
    variadic (value, index) reduce element by element, ~8x slower at a GPT-2 vocabulary. [..., V] -> [...] int32.
    """
    best = jnp.max(logits, axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    hit = (logits == best) | jnp.isnan(logits)  # a NaN is the maximum, as for jnp.argmax
    return jnp.min(jnp.where(hit, index, logits.shape[-1]), axis=-1)


def _chunk_logprobs(
    hidden: jax.Array, wte: jax.Array, targets: jax.Array, temperature: float, entropy: bool = False
) -> tuple[jax.Array, ...]:
    """(log p(target) [B, C] f32, target is the argmax [B, C] bool[, entropy [B, C] f32 nats]) from hidden
    [B, C, D] and the tied table [V, D]."""
    logits = token_einsum("btd,vd->btv", hidden, wte.astype(hidden.dtype))
    logits = nn.with_logical_constraint(logits, ("batch", "length", "act_vocab")).astype(jnp.float32)
    logits = logits / temperature
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    lse = jax.nn.logsumexp(logits, axis=-1)
    greedy = first_argmax(logits) == targets  # the first maximum on ties, as argmax everywhere
    if not entropy:
        return target_logit - lse, greedy
    p = jax.nn.softmax(logits, axis=-1)
    return target_logit - lse, greedy, lse - jnp.sum(p * logits, axis=-1)  # H = logsumexp - E_p[logit]


def token_logprobs(
    hidden: jax.Array,
    wte: jax.Array,
    targets: jax.Array,
    *,
    chunk: int = 0,
    temperature: float = 1.0,
    entropy: bool = False,
) -> tuple[jax.Array, ...]:
    """log p(targets) under logits = hidden @ wte.T / temperature, computed `chunk` positions at a time.

    Args:
      hidden: final hidden states [B, T, D] (after ln_f), in the model's compute dtype.
      wte: the tied token embedding [V, D]; cast to hidden's dtype as the model's own head does.
      targets: token ids [B, T].
      chunk: positions per chunk; 0 or >= T computes all logits at once.
      temperature: the distribution is softmax(logits / temperature) (PPO scores its rollouts' sampling
        distribution).
      entropy: also return each position's entropy (PPO's entropy bonus and diagnostics).
    Returns:
      (log-probabilities [B, T] float32 in nats, greedy [B, T] bool: the target is the argmax of its logits,
      and with `entropy` the entropies [B, T] float32 in nats).
    """
    b, t, d = hidden.shape
    if chunk <= 0 or chunk >= t:
        return _chunk_logprobs(hidden, wte, targets, temperature, entropy)
    n = -(-t // chunk)
    pad = n * chunk - t  # padded positions are computed and cut off again
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # Chunks along the sequence, not along merged tokens, so every chunk keeps the batch sharding of the
    # activations: [B, n*C, D] -> [n, B, C, D], scanned over n.
    hs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
    ys = targets.reshape(b, n, chunk).swapaxes(0, 1)
    step = jax.checkpoint(lambda h, y: _chunk_logprobs(h, wte, y, temperature, entropy))
    _, stats = jax.lax.scan(lambda _, hy: (None, step(*hy)), None, (hs, ys))  # [n, B, C] each
    unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]  # [n, B, C] -> [B, T]
    return tuple(unchunk(x) for x in stats)
