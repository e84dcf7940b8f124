"""Language-modelling step functions: next-token cross-entropy over packed batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from gptx.train.state import TrainState

Batch = dict[str, jax.Array]


def lm_loss_sum(
    params: Any, batch: Batch, rng: jax.Array | None, model: nn.Module, deterministic: bool
) -> tuple[jax.Array, jax.Array]:
    """Summed next-token cross-entropy (nats) over weighted targets, and the summed weights.

    batch: `inputs`, `targets`, `positions`, `segment_ids` [B, T] int32 and `weights` [B, T] float32.
    """
    logits = model.apply(
        {"params": params},
        batch["inputs"],
        batch["positions"],
        batch["segment_ids"],
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )  # [B, T, V] float32
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    w = batch["weights"]
    return jnp.sum(ce * w), jnp.sum(w)


def _micro_batches(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B / n, ...], micro-batch i taking rows i, i + n, ...: every device keeps its rows."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def make_train_step(
    model: nn.Module, grad_accum: int = 1, lr_fn: Callable[[jax.Array], jax.Array] | None = None
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """A pure `(state, batch, rng) -> (state, metrics)` LM step with `grad_accum` micro-batches.

    Gradients are of the mean loss over all weighted tokens of the global batch, however it is split.
    """
    grad_fn = jax.value_and_grad(lm_loss_sum, has_aux=True)

    def step(state: TrainState, batch: Batch, rng: jax.Array):
        if grad_accum == 1:
            (loss_sum, w_sum), grads = grad_fn(state.params, batch, rng, model, False)
        else:

            def accumulate(carry, xs):
                micro, i = xs
                (loss, w), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i), model, False)
                g_acc, l_acc, w_acc = carry
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss, w_acc + w), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            xs = (_micro_batches(batch, grad_accum), jnp.arange(grad_accum))
            (grads, loss_sum, w_sum), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0), xs)
        denom = jnp.maximum(w_sum, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        metrics = {"loss": loss_sum / denom, "grad_norm": optax.global_norm(grads), "target_tokens": w_sum}
        if lr_fn is not None:
            metrics["lr"] = lr_fn(state.step)
        return state.apply_gradients(grads=grads), metrics

    return step


def make_eval_step(model: nn.Module) -> Callable[[Any, Batch], tuple[jax.Array, jax.Array]]:
    """`(params, batch) -> (loss_sum, weight_sum)`, dropout off."""
    return lambda params, batch: lm_loss_sum(params, batch, None, model, True)
