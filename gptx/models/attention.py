"""Causal self-attention: dense or locally banded, packed-sequence aware.

The fast paths: on TPUs, Pallas splash attention (gptx/models/splash.py: block-sparse, no [T, S] scores, banded
layers skip the tiles outside their band); elsewhere `jax.nn.dot_product_attention`, so cuDNN's fused kernel
serves GPUs (including the sliding window of GPT-3's banded layers) and XLA's fused softmax serves CPUs.
`implementation` None (config `auto`) picks splash on TPUs, cuDNN on GPUs where it applies and XLA otherwise
(`auto_implementation`: JAX itself would pick XLA on GPUs too). Attention-probability
dropout (GPT-1/2 train with it) needs the probabilities, so that case uses an explicit softmax; splash cannot
apply it and refuses. Decoding with a KV cache (`cached_attention`) keeps its own explicit path.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from gptx.errors import ConfigError
from gptx.models import splash


def token_einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, x, w)` for a token-times-weight spec whose input and output both start with the token
    dims "bt" (e.g. "btd,df->btf", "btnh,nhd->btd"), computed as one `dot_general` over merged tokens.

    Same math, two CPU-friendly choices. Batch and length are merged into one dimension: XLA:CPU lowers the
    weight gradient of the [B, T]-batched form (a contraction over two dimensions) to copies of the
    activations and a transposed-transposed matmul; one token dimension gives plain matmuls, about 5% of a
    CPU train step. And the contracted dimensions keep the order they have in x: `jnp.einsum` may list them
    in another order (e.g. (h, n) for "btnh,nhd->btd"), and XLA then transposes the weight to match at every
    call, a copy of the whole kernel per decoding step. On GPUs and TPUs both are free.
    """
    ins, out = spec.split("->")
    lhs, rhs = ins.split(",")
    if not (lhs.startswith("bt") and out.startswith("bt")) or "b" in rhs or "t" in rhs:
        raise ValueError(f"token_einsum needs 'bt...' input and output and a weight without them, got {spec!r}")
    lhs, out = lhs[2:], out[2:]
    contract = [c for c in lhs if c in rhs and c not in out]
    lhs_free = [c for c in lhs if c not in contract]
    rhs_free = [c for c in rhs if c not in contract]
    if sorted(lhs_free + rhs_free) != sorted(out):  # a dimension shared by x, w and the output, or a typo
        raise ValueError(f"token_einsum supports plain contractions only, got {spec!r}")
    b, t = x.shape[:2]
    x = x.reshape(b * t, *x.shape[2:])  # [B*T, ...lhs]
    dims = ([1 + lhs.index(c) for c in contract], [rhs.index(c) for c in contract])
    y = jax.lax.dot_general(x, w, (dims, ((), ())), preferred_element_type=jnp.promote_types(x.dtype, w.dtype))
    produced = lhs_free + rhs_free  # y is [B*T, *lhs_free, *rhs_free]
    if produced != list(out):
        y = y.transpose(0, *(1 + produced.index(c) for c in out))
    return y.reshape(b, t, *y.shape[1:])


def attention_mask(segment_ids: jax.Array | None, q_len: int, kv_len: int, window: int | None) -> jax.Array:
    """Boolean [B or 1, 1, T, S] mask: causal, same segment, and within `window` tokens (itself included)."""
    q = jnp.arange(q_len)[:, None]
    k = jnp.arange(kv_len)[None, :]
    mask = k <= q
    if window is not None:
        mask &= k > q - window
    mask = mask[None, None]  # [1, 1, T, S]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    return mask


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    window: int | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    implementation: str | None = None,
    splash_blocks: tuple[int, int] = (splash.DEFAULT_BLOCK, splash.DEFAULT_BLOCK),
) -> jax.Array:
    """Causal attention over q, k, v of shape [B, T, N, H]; returns [B, T, N, H].

    Token t attends to tokens s <= t of its own segment (segment_ids [B, T], 0 = padding) and, when `window`
    is set, only to the `window` most recent ones (itself included). `implementation`: None (splash on TPUs,
    else JAX's choice), "splash", or one of `jax.nn.dot_product_attention`'s ("xla", "cudnn");
    `splash_blocks` = (block_q, block_kv), splash's tiles.
    """
    if dropout_rate > 0.0 and dropout_rng is not None:
        if implementation == "splash":
            raise ConfigError(
                f"config.model.attn_dropout={dropout_rate}: splash attention cannot drop attention probabilities "
                "(it never forms them); set config.model.attn_dropout=0 or config.model.attention_impl=xla"
            )
        return _attention_with_dropout(q, k, v, segment_ids, window, dropout_rate, dropout_rng)
    if implementation is None:
        implementation = auto_implementation(splash.target_platform(), q.dtype, q.shape[-1], segment_ids is not None)
    if implementation == "splash":
        block_q, block_kv = splash_blocks
        return splash.splash_attention(
            q, k, v, segment_ids=segment_ids, window=window, block_q=block_q, block_kv=block_kv
        )
    mask = None
    if segment_ids is not None:
        mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # [B, 1, T, S]
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=mask,
        is_causal=True,
        local_window_size=(window - 1, 0) if window is not None else None,
        implementation=implementation,
    )


def auto_implementation(platform: str, dtype: Any, head_dim: int, packed: bool) -> str | None:
    """What `attention_impl=auto` runs: splash on TPUs; cuDNN's fused attention on GPUs where it applies (16-bit
    inputs, a head size that is a multiple of 8 up to 128, no packed-document mask, which cuDNN would take as a
    dense [T, T] bias), with GPT-3's banded layers as its sliding window; else XLA (None)."""
    if platform == "tpu":
        return "splash"
    if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0:
        return "cudnn" if head_dim <= 128 and not packed else None
    return None


def _attention_with_dropout(q, k, v, segment_ids, window, rate, rng):
    b, t, n, h = q.shape
    logits = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) / jnp.sqrt(h).astype(jnp.float32)
    mask = attention_mask(segment_ids, t, k.shape[1], window)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    keep = jax.random.bernoulli(rng, 1.0 - rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - rate), 0.0).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)


def cached_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    cache: dict[str, jax.Array],
    cache_index: jax.Array,
    kv_mask: jax.Array,
    window: int | None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Attention of T new tokens (q, k, v [B, T, N, H]) over a KV cache ({"k", "v"}: [B, N, S, H]).

    The new keys and values go to slots cache_index .. cache_index + T - 1. A query attends to the slots up to
    its own that kv_mask [B, S] marks as real tokens (left padding is not) and, for banded layers, to the last
    `window` slots only: real tokens occupy consecutive slots after the padding, so slot distance is token
    distance. Returns (y [B, T, N, H], the updated cache).
    """
    # The cache keeps heads before positions ([B, N, S, H]), so each head's keys are contiguous for q.K.
    start = (0, 0, cache_index, 0)
    k_all = jax.lax.dynamic_update_slice(cache["k"], k.transpose(0, 2, 1, 3).astype(cache["k"].dtype), start)
    v_all = jax.lax.dynamic_update_slice(cache["v"], v.transpose(0, 2, 1, 3).astype(cache["v"].dtype), start)
    k_all = nn.with_logical_constraint(k_all, ("batch", "act_heads", "length", "kv"))
    v_all = nn.with_logical_constraint(v_all, ("batch", "act_heads", "length", "kv"))
    q_slot = cache_index + jnp.arange(q.shape[1])[:, None]  # [T, 1]
    k_slot = jnp.arange(k_all.shape[2])[None, :]  # [1, S]
    visible = k_slot <= q_slot
    if window is not None:
        visible &= k_slot > q_slot - window
    # A padding query sees itself, so no softmax row is empty; no real query ever sees a padding slot.
    mask = (visible[None, None] & kv_mask[:, None, None, :]) | (k_slot == q_slot)[None, None]  # [B, 1, T, S]
    scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    logits = jnp.einsum("btnh,bnsh->bnts", q, k_all.astype(q.dtype)).astype(jnp.float32) * scale
    probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
    y = jnp.einsum("bnts,bnsh->btnh", probs.astype(v_all.dtype), v_all).astype(q.dtype)
    return y, {"k": k_all, "v": v_all}


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection.

    Parameters keep heads as their own dimension ([D, 3, N, H] and [N, H, D]) so tensor parallelism shards
    heads without reshapes; the layout maps one-to-one onto GPT-2's `c_attn`/`c_proj`.
    """

    n_head: int
    d_head: int
    window: int | None = None
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    out_init_std: float = 0.02
    init_std: float = 0.02
    implementation: str | None = None
    splash_block_q: int = 0  # splash attention's query tile; 0: splash.DEFAULT_BLOCK
    splash_block_kv: int = 0  # and key/value tile
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        segment_ids: jax.Array | None = None,
        cache: dict[str, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
        kv_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        """x [B, T, D] -> (y [B, T, D], updated cache or None).

        Without a cache, tokens attend causally within their segment. With a cache ({"k", "v"}: [B, N, S, H]),
        x holds the tokens of cache slots cache_index .. cache_index + T - 1: their keys and values are written
        there, and they attend to every earlier slot that kv_mask [B, S] marks as a real token.
        """
        d_model = x.shape[-1]
        n, h = self.n_head, self.d_head
        # Pins the input (and, in the backward pass, its cotangent) to batch sharding, so FSDP-sharded
        # kernels do not drag activations onto the `embed` sharding.
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        init = nn.initializers.normal(self.init_std)
        w_qkv = self.param(
            "qkv_kernel",
            nn.with_logical_partitioning(init, ("embed", "qkv", "heads", "kv")),
            (d_model, 3, n, h),
            self.param_dtype,
        )
        b_qkv = self.param(
            "qkv_bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("qkv", "heads", "kv")),
            (3, n, h),
            self.param_dtype,
        )
        qkv = token_einsum("btd,dknh->btknh", x, w_qkv.astype(self.dtype)) + b_qkv.astype(self.dtype)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, N, H] each
        q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "length", "act_heads", "kv"))
        v = nn.with_logical_constraint(v, ("batch", "length", "act_heads", "kv"))

        if cache is not None:
            y, cache = cached_attention(q, k, v, cache, cache_index, kv_mask, self.window)
        else:
            y = self._attend(q, k, v, segment_ids)
        return self._project_out(y, d_model), cache

    def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        use_dropout = not self.deterministic and self.attn_dropout > 0.0
        return dot_product_attention(
            q,
            k,
            v,
            segment_ids=segment_ids,
            window=self.window,
            dropout_rate=self.attn_dropout if use_dropout else 0.0,
            dropout_rng=self.make_rng("dropout") if use_dropout else None,
            implementation=self.implementation,
            splash_blocks=(self.splash_block_q or splash.DEFAULT_BLOCK, self.splash_block_kv or splash.DEFAULT_BLOCK),
        )

    def _project_out(self, y: jax.Array, d_model: int) -> jax.Array:
        n, h = self.n_head, self.d_head
        y = nn.with_logical_constraint(y, ("batch", "length", "act_heads", "kv"))
        w_out = self.param(
            "out_kernel",
            nn.with_logical_partitioning(nn.initializers.normal(self.out_init_std), ("heads", "kv", "embed")),
            (n, h, d_model),
            self.param_dtype,
        )
        b_out = self.param(
            "out_bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
            (d_model,),
            self.param_dtype,
        )
        y = token_einsum("btnh,nhd->btd", y, w_out.astype(self.dtype)) + b_out.astype(self.dtype)
        y = nn.Dropout(self.resid_dropout)(y, deterministic=self.deterministic)
        return nn.with_logical_constraint(y, ("batch", "length", "act_embed"))
