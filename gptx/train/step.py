"""The one gradient step builder: a loss function in, a pure `(state, batch, rng) -> (state, metrics)` out.

Every trainer (LM pretraining, GPT-1 fine-tuning, SFT, the reward model, CLIP/SigLIP, the multimodal decoder)
writes only its loss; gradient accumulation, the gradient norm, the learning rate metric, frozen parts and the
optimizer update live here once.

A loss is two functions so that accumulating micro-batches gives exactly the gradient of the whole batch:

  norms(batch) -> {name: scalar}       normalisers read from the WHOLE batch before it is split (target-token
                                       counts, example counts); they do not depend on the parameters. Losses
                                       divide by max(norm, 1), so an all-padding batch gives 0, not NaN
  fn(params, batch, rng, norms)        (loss, metrics) of one micro-batch, each a sum over its rows divided by
       -> (loss, metrics)              the whole batch's normalisers, so that micro-batch values add up to the
                                       whole batch's (a mean over 2 micro-batches of uneven weight is not the
                                       mean over the batch, a sum divided by the batch's total is). rng None
                                       means evaluation: dropout off

A loss that is one sum divided by one normaliser (the LM losses) names it as its `denominator`: the step then
differentiates the sum itself (fn called with that normaliser set to 1) and divides gradient and loss once at
the end, as micro-batch sums accumulate; fn's metrics must then not depend on that normaliser.

A loss that does not decompose over rows (CLIP's B x B similarities) scales its micro-batch mean by the
micro-batch's share of the batch: accumulation then averages micro-batch losses, as such methods do without
gradient caching.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array | None, dict[str, jax.Array]], tuple[jax.Array, Metrics]]


def no_norms(batch: Batch) -> dict[str, jax.Array]:
    return {}


@dataclasses.dataclass(frozen=True)
class Loss:
    """A training objective as the step builder takes it (see the module docstring)."""

    fn: LossFn
    norms: Callable[[Batch], dict[str, jax.Array]] = no_norms
    denominator: str = ""

    def unit_norms(self, norms: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The normalisers fn is called with: the denominator's set to 1, so fn returns its sum."""
        if not self.denominator:
            return norms
        return {**norms, self.denominator: jnp.ones_like(norms[self.denominator])}


def micro_batches(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B / n, ...], micro-batch i taking rows i, i + n, ...: every device keeps its rows."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def accumulate_gradients(
    loss: Loss, params: Any, batch: Batch, rng: jax.Array, grad_accum: int, frozen: Any = None
) -> tuple[Any, jax.Array, Metrics]:
    """(gradients, loss, metrics) of the whole batch, in `grad_accum` micro-batches (one lax.scan).

    frozen: params that enter the loss but get no gradient (merged over `params` as {**frozen, **params}).
    """
    norms = loss.norms(batch)
    fn_norms = loss.unit_norms(norms)

    def value_and_grad(p, micro, r):
        def objective(q):
            return loss.fn(q if frozen is None else {**frozen, **q}, micro, r, fn_norms)

        return jax.value_and_grad(objective, has_aux=True)(p)

    if grad_accum == 1:
        (value, metrics), grads = value_and_grad(params, batch, rng)
        return (*_divide(loss, norms, grads, value), metrics)

    def body(carry, xs):
        micro, i = xs
        (value, metrics), grads = value_and_grad(params, micro, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (grads, value, metrics)), None

    micro = micro_batches(batch, grad_accum)
    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: value_and_grad(params, first, rng))
    (value0, metrics0), grads0 = shapes
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads0, value0, metrics0))
    (grads, value, metrics), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(grad_accum)))
    return (*_divide(loss, norms, grads, value), metrics)


def _divide(loss: Loss, norms: dict[str, jax.Array], grads: Any, value: jax.Array) -> tuple[Any, jax.Array]:
    """(gradients, loss) of a denominator loss divided by its normaliser (unchanged for any other loss)."""
    if not loss.denominator:
        return grads, value
    d = jnp.maximum(norms[loss.denominator], 1.0)
    return jax.tree.map(lambda g: g / d, grads), value / d


def make_train_step(
    loss: Loss,
    *,
    grad_accum: int = 1,
    lr_fn: Callable[[jax.Array], jax.Array] | None = None,
    trainable: Sequence[str] | None = None,
):
    """A pure `(state, batch, rng) -> (state, metrics)` optimizer step on `loss`.

    grad_accum: micro-batches per step (the batch's leading dimension must divide by it). lr_fn: the schedule,
    logged as `lr`. trainable: top-level parameter groups that are trained; the others are frozen (no backward
    pass into them; their updates are zeros, which an `optax.freeze`d optimizer leaves exactly unchanged).
    Metrics: the loss's own (`loss` included) plus `grad_norm` (global L2 norm of the trained gradients).
    """

    def step(state, batch: Batch, rng: jax.Array):
        params, frozen = state.params, None
        if trainable is not None:
            params = {k: v for k, v in state.params.items() if k in trainable}
            frozen = {k: v for k, v in state.params.items() if k not in trainable}
        grads, value, metrics = accumulate_gradients(loss, params, batch, rng, grad_accum, frozen)
        metrics = {**metrics, "loss": value, "grad_norm": optax.global_norm(grads)}
        if lr_fn is not None:
            metrics["lr"] = lr_fn(state.step)
        if frozen is not None:
            grads = {**jax.tree.map(jnp.zeros_like, frozen), **grads}
        return state.apply_gradients(grads=grads), metrics

    return step


def make_eval_step(loss: Loss, weight: str):
    """`(params, batch) -> (loss sum, weight)` for the loop's eval_loss, dropout off (no rng): the loss times the
    batch's normaliser `weight`, so the loop's sum over batches divided by the summed weights is the mean loss."""

    def step(params, batch: Batch):
        norms = loss.norms(batch)
        if loss.denominator == weight:  # fn gives the sum itself
            value, _ = loss.fn(params, batch, None, loss.unit_norms(norms))
            return value, norms[weight]
        value, _ = loss.fn(params, batch, None, norms)
        return value * jnp.maximum(norms[weight], 1.0), norms[weight]

    return step
