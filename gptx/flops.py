"""Parameter counts, model FLOPs per token and MFU, computed without allocating a model."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from gptx.models import GPT, GPTConfig

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA B200": 2250e12,
}


def abstract_params(cfg: GPTConfig) -> dict:
    """Parameter shapes via `jax.eval_shape`: nothing is allocated, so 175B costs nothing."""
    tokens = jax.ShapeDtypeStruct((1, min(cfg.block_size, 8)), jnp.int32)
    variables = jax.eval_shape(lambda t: GPT(cfg).init(jax.random.key(0), t), tokens)
    return nn.meta.unbox(variables["params"])


def count_params(cfg: GPTConfig) -> int:
    """Total trainable parameters (tied embeddings counted once)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(cfg)))


def flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (matmul parameters) plus attention (PaLM appendix B).

    Matmul parameters exclude the position table and LayerNorms but include the tied output projection.
    Attention costs 12 * d_attn * context per layer (QK^T and AV, forward + backward), where a banded layer's
    context is its window. Causal masking is not discounted, following PaLM and nanoGPT.
    """
    d, d_attn, f = cfg.d_model, cfg.n_head * cfg.head_dim, cfg.ff_dim
    per_layer = d * 3 * d_attn + d_attn * d + 2 * d * f
    matmul_params = cfg.n_layer * per_layer + cfg.vocab_size * d
    attention = sum(12 * d_attn * min(seq_len, cfg.window(i) or seq_len) for i in range(cfg.n_layer))
    return 6 * matmul_params + attention


def peak_flops_per_device(override: float = 0.0) -> float:
    """Peak FLOP/s of one local device; NaN when unknown (CPUs), so MFU reads as NaN rather than lies."""
    if override > 0:
        return override
    kind = jax.local_devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if kind.startswith(name):
            return flops
    return float("nan")
