"""Heads on a decoder's final hidden states, and the models made of a GPT body and a head: GPT-1's linear
classifier and multi-task fine-tuning model, InstructGPT's scalar reward (and value) model.

Parameters carry logical axis names like gpt.py's (`embed` is FSDP-sharded; the few output classes are
replicated), so the heads shard under the same rules as the body.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from gptx.models.gpt import GPT, GPTConfig


class ClassifierHead(nn.Module):
    """Dropout, then a linear map from a hidden state [..., D] to `n_out` logits [..., n_out] (float32).

    GPT-1 (Sec. 3.2): P(y | x) = softmax(h_l W_y) on the extract token's final hidden state, with dropout 0.1
    on the classifier input. `n_out` = 1 scores one multiple-choice candidate.
    """

    n_out: int
    dropout: float = 0.1
    init_std: float = 0.02
    dtype: jnp.dtype | str = "float32"
    param_dtype: jnp.dtype | str = "float32"

    @nn.compact
    def __call__(self, h: jax.Array, *, deterministic: bool = True) -> jax.Array:
        d = h.shape[-1]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("embed", "classes")),
            (d, self.n_out),
            jnp.dtype(self.param_dtype),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)),
            (self.n_out,),
            jnp.dtype(self.param_dtype),
        )
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        dtype = jnp.dtype(self.dtype)
        y = jnp.einsum("...d,dc->...c", h.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)
        return y.astype(jnp.float32)


# ------------------------------------------------------------------------------------------------------------
# GPT-1 fine-tuning: one body, a head per task

NEG = -1e9  # logit of an unused class / choice slot

# How a task's sequences become its logits (GPT-1, Fig. 1):
ONE = "one"  # classification, entailment: head(h_extract) of the one sequence
SUM = "sum"  # similarity: head(h_extract(a;b) + h_extract(b;a)), both orderings summed
CHOICES = "choices"  # multiple choice: a scalar head(h_extract(context;choice_k)) per sequence, softmax over k
POOLINGS = (ONE, SUM, CHOICES)


@dataclasses.dataclass(frozen=True)
class TaskHead:
    """What the fine-tuning model needs to know of a task: its name, how its sequences pool, its outputs."""

    name: str
    pooling: str
    n_out: int

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"task {self.name}: pooling {self.pooling!r} is not one of {POOLINGS}")


class FinetuneModel(nn.Module):
    """GPT body (params under `gpt`) plus one `ClassifierHead` per task (`head_<task>`).

    Inputs (per example b, sequence s): tokens/segment_ids [B, S, T], extract_pos/seq_mask [B, S], task [B, 1].
    Returns logits [B, C] (C = the most outputs of any task; unused slots NEG) and, when `with_lm`, the final
    hidden states [B, S, T, D] of the same sequences, from which the auxiliary LM loss takes its log-probabilities
    through the tied embedding (params["gpt"]["wte"]) without materialising the vocabulary logits.
    """

    cfg: GPTConfig
    tasks: tuple[TaskHead, ...]
    clf_dropout: float = 0.1

    @property
    def n_out(self) -> int:
        return max(t.n_out for t in self.tasks)

    @nn.compact
    def __call__(self, tokens, segment_ids, extract_pos, seq_mask, task, *, deterministic=True, with_lm=False):
        b, s, t = tokens.shape
        gpt = GPT(self.cfg, name="gpt")
        hidden = gpt(
            tokens.reshape(b * s, t),
            None,
            segment_ids.reshape(b * s, t),
            deterministic=deterministic,
            return_hidden=True,
        ).reshape(b, s, t, -1)  # [B, S, T, D]
        h = jnp.take_along_axis(hidden, extract_pos[:, :, None, None], axis=2)[:, :, 0]  # [B, S, D]
        logits = jnp.full((b, self.n_out), NEG, jnp.float32)
        for k, spec in enumerate(self.tasks):
            out = self._task_logits(spec, h, seq_mask, deterministic)[:, : self.n_out]
            out = jnp.pad(out, ((0, 0), (0, self.n_out - out.shape[1])), constant_values=NEG)
            logits = jnp.where(task == k, out, logits)
        return logits, (hidden if with_lm else None)

    def _task_logits(self, spec: TaskHead, h, seq_mask, deterministic: bool) -> jax.Array:
        """[B, n_out] logits of one task from the extract states h [B, S, D]."""
        head = ClassifierHead(
            1 if spec.pooling == CHOICES else spec.n_out,
            dropout=self.clf_dropout,
            init_std=self.cfg.init_std,
            dtype=self.cfg.dtype,
            param_dtype=self.cfg.param_dtype,
            name=f"head_{spec.name}",
        )
        if spec.pooling == CHOICES:
            return jnp.where(seq_mask > 0, head(h, deterministic=deterministic)[..., 0], NEG)  # [B, S]
        if spec.pooling == SUM:
            return head(h[:, 0] + h[:, 1], deterministic=deterministic)  # both orderings, summed
        return head(h[:, 0], deterministic=deterministic)


# ------------------------------------------------------------------------------------------------------------
# InstructGPT: the reward model (and PPO's value model, the same network)


class RewardModel(nn.Module):
    """GPT trunk (params under `gpt`) and a scalar head (`head`): tokens [B, T] -> one scalar per position [B, T]
    (float32). The reward is the value at the last real token; PPO's value model is the same network read at
    every response position."""

    cfg: GPTConfig

    @nn.compact
    def __call__(self, tokens, positions=None, segment_ids=None, *, deterministic: bool = True) -> jax.Array:
        h = GPT(self.cfg, name="gpt")(
            tokens, positions, segment_ids, deterministic=deterministic, return_hidden=True
        )  # [B, T, D]
        head = ClassifierHead(
            1,
            dropout=0.0,
            init_std=1.0 / math.sqrt(self.cfg.d_model + 1),  # lm-human-preferences' reward head init
            dtype=self.cfg.dtype,
            param_dtype=self.cfg.param_dtype,
            name="head",
        )
        return head(h, deterministic=deterministic)[..., 0]


def fold_affine(params: dict, gain: jax.Array | float, bias: jax.Array | float) -> dict:
    """RewardModel params whose output is gain · r + bias, r the output of `params`: the head's kernel scaled by
    the gain, its bias mapped to gain · b + bias. PPO's value model starts from the reward model folded with the
    reward's normalisation, so its first values are on the scale of the rewards it predicts (lm-human-preferences
    keeps gain and bias inside the reward head, so a value head copied from it is normalised the same way)."""
    head = params["head"]
    return {**params, "head": {"kernel": head["kernel"] * gain, "bias": head["bias"] * gain + bias}}
