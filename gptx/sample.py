"""Autoregressive sampling from a GPT (full-context recompute per token; a KV-cache decoder supersedes it)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k"))
def generate(
    model: nn.Module,
    params: Any,
    prompt: jax.Array,
    rng: jax.Array,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
) -> jax.Array:
    """Samples continuations of equal-length prompts [B, P]; returns tokens [B, P + max_new_tokens].

    temperature 0 is greedy decoding; top_k > 0 keeps only the k most likely tokens. P + max_new_tokens
    must fit the model's context.
    """
    b, p = prompt.shape
    total = p + max_new_tokens
    if total > model.cfg.block_size:
        raise ValueError(f"prompt ({p}) + max_new_tokens ({max_new_tokens}) exceed the context {model.cfg.block_size}")
    tokens = jnp.zeros((b, total), jnp.int32).at[:, :p].set(prompt)

    def body(i, carry):
        tokens, rng = carry
        # Causal attention: positions >= i do not affect the logits at i - 1, so the buffer can stay full size.
        logits = model.apply({"params": params}, tokens)[:, i - 1]  # [B, V]
        rng, key = jax.random.split(rng)
        if top_k > 0:
            kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        sampled = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
        nxt = jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1))
        return tokens.at[:, i].set(nxt.astype(jnp.int32)), rng

    tokens, _ = jax.lax.fori_loop(p, total, body, (tokens, rng))
    return tokens
