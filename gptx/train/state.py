"""TrainState and the GPT-3 optimizer: AdamW, warmup + cosine decay, global-norm clipping."""

from __future__ import annotations

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


def make_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """clip(global norm) -> AdamW(b1, b2, eps, decoupled weight decay on matrices) with the schedule."""
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
        optax.adamw(lr_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, mask=decay_mask),
    )
