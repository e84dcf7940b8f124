"""TrainState and the optimizers: AdamW with global-norm clipping; GPT-3's warmup + cosine decay schedule and
GPT-1 fine-tuning's linear warmup + linear decay."""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import optax
from flax.training import train_state

TrainState = train_state.TrainState

# Parameters that are matrices and get weight decay; biases and LayerNorm gains do not (GPT-3, App. B).
DECAYED = ("kernel", "wte", "wpe")


def _leaf_name(path) -> str:
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(names[-1]) if names else ""


def decay_mask(params: Any) -> Any:
    """True for weight matrices (by name, so scanned layers with a leading layer axis are judged right)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path).endswith(DECAYED), params)


def lr_schedule(t: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine decay to `min_lr_ratio * lr` at `decay_steps`, constant after."""
    decay_steps = t.decay_steps or t.steps
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=t.lr,
        warmup_steps=t.warmup_steps,
        decay_steps=max(decay_steps, t.warmup_steps + 1),
        end_value=t.lr * t.min_lr_ratio,
    )


def linear_schedule(lr: float, steps: int, warmup_fraction: float) -> optax.Schedule:
    """GPT-1 fine-tuning: linear warmup over `warmup_fraction` of the steps (at least 1), linear decay to 0."""
    warmup = max(1, math.ceil(steps * warmup_fraction))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.linear_schedule(lr, 0.0, max(steps - warmup, 1))],
        [warmup],
    )


def make_optimizer(
    t: ml_collections.ConfigDict, schedule: optax.Schedule | None = None
) -> optax.GradientTransformation:
    """clip(global norm) -> AdamW(b1, b2, eps, decoupled weight decay on matrices) with `schedule` (default:
    the config's warmup + cosine decay, `lr_schedule(t)`)."""
    schedule = lr_schedule(t) if schedule is None else schedule
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, mask=decay_mask),
    )
