"""Heads on a decoder's final hidden states: GPT-1's linear classifier.

Parameters carry logical axis names like gpt.py's (`embed` is FSDP-sharded; the few output classes are
replicated), so the heads shard under the same rules as the body.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


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
