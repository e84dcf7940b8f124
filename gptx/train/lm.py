"""The language-modelling loss: next-token cross-entropy over packed batches (pretraining, SFT, PPO-ptx)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from gptx.models import vocab_tiling
from gptx.train import step as step_lib

Batch = dict[str, jax.Array]


def lm_loss_sum(params: Any, batch: Batch, rng: jax.Array | None, model: nn.Module) -> tuple[jax.Array, jax.Array]:
    """Summed next-token cross-entropy (nats) over weighted targets, and the summed weights.

    batch: `inputs`, `targets`, `positions`, `segment_ids` [B, T] int32 and `weights` [B, T] float32.
    rng: the dropout key; None evaluates with dropout off.
    """
    hidden = model.apply(
        {"params": params},
        batch["inputs"],
        batch["positions"],
        batch["segment_ids"],
        deterministic=rng is None,
        rngs=None if rng is None else {"dropout": rng},
        return_hidden=True,
    )  # [B, T, D]
    # The [B, T, V] logits exist only model.cfg.logits_chunk positions at a time.
    wte = nn.meta.unbox(params["wte"])  # the tied output head; params straight from init are still boxed
    logp, _ = vocab_tiling.token_logprobs(hidden, wte, batch["targets"], chunk=model.cfg.logits_chunk)
    w = batch["weights"]
    return -jnp.sum(logp * w), jnp.sum(w)


def loss(model: nn.Module) -> step_lib.Loss:
    """Mean cross-entropy over every weighted target of the whole batch, however it is split into micro-batches.

    Metrics: `target_tokens`, the summed target weights of the batch.
    """

    def fn(params, batch, rng, norms):
        total, w = lm_loss_sum(params, batch, rng, model)
        return total / jnp.maximum(norms["tokens"], 1.0), {"target_tokens": w}

    return step_lib.Loss(fn=fn, norms=lambda batch: {"tokens": jnp.sum(batch["weights"])}, denominator="tokens")


def make_eval_step(model: nn.Module):
    """`(params, batch) -> (loss sum, target weight)`, dropout off."""
    return step_lib.make_eval_step(loss(model), "tokens")
