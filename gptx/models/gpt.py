"""The GPT decoder family: GPT-1 (post-LN), GPT-2 (pre-LN + final LN), GPT-3 (dense/banded layers).

Pure Flax linen: parameters carry logical axis names, activations carry logical constraints, and nothing here
knows about devices (see gptx/mesh.py). The compute dtype (e.g. bfloat16) is separate from the parameter dtype.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from gptx import config as config_lib
from gptx.models.attention import CausalSelfAttention, token_einsum

# One layer's KV cache: {"k": [B, N, S, H], "v": [B, N, S, H]}; a model's cache maps layer names to these
# (stacked along a leading layer-group axis under "layers" when the layers are scanned).
Cache = dict[str, jax.Array]

# config.model.remat -> checkpoint policy. The names come from gptx.config (the one list); "none" has no policy.
REMAT_POLICIES = {
    name: getattr(jax.checkpoint_policies, policy) for name, policy in config_lib.REMAT_POLICIES.items() if policy
}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Hashable model hyper-parameters (a frozen copy of `config.model`)."""

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_head: int = 0
    d_ff: int = 0
    arch: str = "gpt2"
    dropout: float = 0.1
    attn_dropout: float = 0.1
    attention: str = "dense"
    local_window: int = 256
    attention_impl: str = "auto"
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: jnp.dtype | str = "float32"
    param_dtype: jnp.dtype | str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    logits_chunk: int = 0  # positions per chunk of the losses' logits (gptx/models/vocab_tiling.py); 0: all
    splash_block_q: int = 0  # splash attention's query / key-value tiles (multiples of 128); 0: 512
    splash_block_kv: int = 0
    name: str = "custom"

    def __post_init__(self):
        # Accept dtype names from configs; modules want dtype objects.
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))

    @classmethod
    def from_config(cls, model_cfg: ml_collections.ConfigDict) -> GPTConfig:
        return cls(**model_cfg.to_dict())

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_head

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def pre_ln(self) -> bool:
        return self.arch != "gpt1"

    def window(self, layer: int) -> int | None:
        """Attention window of a layer: None (dense) or the band width. GPT-3 alternates, dense first."""
        if self.attention == "alternating" and layer % 2 == 1:
            return self.local_window
        return None


def _layer_norm(cfg: GPTConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name,
    )


class MLP(nn.Module):
    """Position-wise GELU MLP, d_model -> d_ff -> d_model."""

    cfg: GPTConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, d = self.cfg, x.shape[-1]
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))  # see CausalSelfAttention
        w_fc = self.param(
            "fc_kernel",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("embed", "mlp")),
            (d, cfg.ff_dim),
            cfg.param_dtype,
        )
        b_fc = self.param(
            "fc_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (cfg.ff_dim,), cfg.param_dtype
        )
        h = token_einsum("btd,df->btf", x, w_fc.astype(cfg.dtype)) + b_fc.astype(cfg.dtype)
        h = nn.with_logical_constraint(h, ("batch", "length", "act_mlp"))
        h = nn.gelu(h, approximate=True)  # GPT-1/2 use the tanh approximation
        w_proj = self.param(
            "proj_kernel",
            nn.with_logical_partitioning(nn.initializers.normal(_resid_std(cfg)), ("mlp", "embed")),
            (cfg.ff_dim, d),
            cfg.param_dtype,
        )
        b_proj = self.param(
            "proj_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (d,), cfg.param_dtype
        )
        y = token_einsum("btf,fd->btd", h, w_proj.astype(cfg.dtype)) + b_proj.astype(cfg.dtype)
        y = nn.Dropout(cfg.dropout)(y, deterministic=self.deterministic)
        return nn.with_logical_constraint(y, ("batch", "length", "act_embed"))


def _resid_std(cfg: GPTConfig) -> float:
    """GPT-2 scales the init of projections into the residual stream by 1/sqrt(2 * n_layer)."""
    return cfg.init_std / math.sqrt(2 * cfg.n_layer) if cfg.pre_ln else cfg.init_std


class Block(nn.Module):
    """One Transformer layer. Post-LN (GPT-1): x = LN(x + f(x)); pre-LN (GPT-2/3): x = x + f(LN(x))."""

    cfg: GPTConfig
    window: int | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        segment_ids: jax.Array | None,
        cache: Cache | None = None,
        cache_index: jax.Array | None = None,
        kv_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """x [B, T, D] -> (x [B, T, D], this layer's updated KV cache or None); see CausalSelfAttention."""
        cfg = self.cfg
        attn = CausalSelfAttention(
            n_head=cfg.n_head,
            d_head=cfg.head_dim,
            window=self.window,
            attn_dropout=cfg.attn_dropout,
            resid_dropout=cfg.dropout,
            out_init_std=_resid_std(cfg),
            init_std=cfg.init_std,
            implementation=None if cfg.attention_impl == "auto" else cfg.attention_impl,
            splash_block_q=cfg.splash_block_q,
            splash_block_kv=cfg.splash_block_kv,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            deterministic=self.deterministic,
            name="attn",
        )
        mlp = MLP(cfg, deterministic=self.deterministic, name="mlp")
        ln_1, ln_2 = _layer_norm(cfg, "ln_1"), _layer_norm(cfg, "ln_2")
        if cfg.pre_ln:
            a, cache = attn(ln_1(x), segment_ids, cache, cache_index, kv_mask)
            x = x + a
            x = x + mlp(ln_2(x))
        else:
            a, cache = attn(x, segment_ids, cache, cache_index, kv_mask)
            x = ln_1(x + a)
            x = ln_2(x + mlp(x))
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed")), cache


class LayerGroup(nn.Module):
    """The repeating unit of the layer stack: one dense layer, or a dense + banded pair (GPT-3).

    Scanning over groups keeps each layer's window static, as the attention kernels need.
    """

    cfg: GPTConfig
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        segment_ids: jax.Array | None,
        cache: dict[str, Cache] | None = None,
        cache_index: jax.Array | None = None,
        kv_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, Cache] | None]:
        block = _maybe_remat(self.cfg)
        new_cache = {} if cache is not None else None
        for i in range(_group_size(self.cfg)):
            name = f"layer_{i}"
            layer_cache = cache[name] if cache is not None else None
            x, layer_cache = block(self.cfg, self.cfg.window(i), self.deterministic, name=name)(
                x, segment_ids, layer_cache, cache_index, kv_mask
            )
            if cache is not None:
                new_cache[name] = layer_cache
        return x, new_cache


def _group_size(cfg: GPTConfig) -> int:
    return 2 if cfg.attention == "alternating" else 1


def _maybe_remat(cfg: GPTConfig) -> type[Block]:
    if cfg.remat == "none":
        return Block
    return nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)


class GPT(nn.Module):
    """Decoder-only Transformer language model with tied input/output embeddings.

    Call with tokens [B, T] (int), optional positions [B, T] (per-segment positions of packed sequences) and
    segment_ids [B, T] (documents numbered from 1, 0 = padding); returns logits [B, T, vocab] in float32,
    or the final hidden states [B, T, D] when `return_hidden`; with `last_only`, those of the last position
    ([B, 1, ...]).

    Decoding passes a KV cache (from `init_cache`) with `cache_index` (the cache slot of tokens[:, 0]) and
    `kv_mask` [B, S] (True where a slot holds a real token, including the ones being written); the call then
    returns (logits or hidden, updated cache). `input_embeds` [B, T, D] replace the token embeddings, so other
    modalities can enter the token stream (positions are still added).
    """

    cfg: GPTConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        return_hidden: bool = False,
        last_only: bool = False,
        cache: dict | None = None,
        cache_index: jax.Array | None = None,
        kv_mask: jax.Array | None = None,
        input_embeds: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, dict]:
        cfg = self.cfg
        _, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), tokens.shape)
        wte = self.param(
            "wte",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
            (cfg.vocab_size, cfg.d_model),
            cfg.param_dtype,
        )
        wpe = self.param(
            "wpe",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("positions", "embed")),
            (cfg.block_size, cfg.d_model),
            cfg.param_dtype,
        )
        # FSDP all-gathers the tables' embed dimension before the lookup, so the gathered rows come out
        # batch-sharded instead of being resharded from `embed` to `batch` afterwards.
        wte_rows = nn.with_logical_constraint(wte, ("vocab", None))
        wpe_rows = nn.with_logical_constraint(wpe, ("positions", None))
        token_embeds = jnp.take(wte_rows, tokens, axis=0) if input_embeds is None else input_embeds
        x = (token_embeds + jnp.take(wpe_rows, positions, axis=0)).astype(cfg.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        x, cache = self._layers(x, segment_ids, deterministic, cache, cache_index, kv_mask)
        if cfg.pre_ln:
            x = _layer_norm(cfg, "ln_f")(x)
        if last_only:  # a prefill needs the next-token logits of the last position only
            x = x[:, -1:]
        if not return_hidden:
            x = token_einsum("btd,vd->btv", x, wte.astype(cfg.dtype))
            x = nn.with_logical_constraint(x, ("batch", "length", "act_vocab")).astype(jnp.float32)
        return x if cache is None else (x, cache)

    def _layers(self, x, segment_ids, deterministic, cache, cache_index, kv_mask):
        cfg = self.cfg
        n_groups = cfg.n_layer // _group_size(cfg)
        if cfg.scan_layers:
            scanned = nn.scan(
                LayerGroup,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, 0, nn.broadcast, nn.broadcast),  # the cache is stacked over groups
                length=n_groups,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            layer_cache = cache["layers"] if cache is not None else None
            x, layer_cache = scanned(cfg, deterministic, name="layers")(
                x, segment_ids, layer_cache, cache_index, kv_mask
            )
            return x, ({"layers": layer_cache} if cache is not None else None)
        block = _maybe_remat(cfg)
        new_cache = {} if cache is not None else None
        for i in range(cfg.n_layer):
            name = f"h_{i}"
            x, layer_cache = block(cfg, cfg.window(i), deterministic, name=name)(
                x, segment_ids, cache[name] if cache is not None else None, cache_index, kv_mask
            )
            if cache is not None:
                new_cache[name] = layer_cache
        return x, new_cache


def init_cache(cfg: GPTConfig, batch: int, length: int) -> dict:
    """An empty KV cache for `batch` sequences of up to `length` tokens, laid out as GPT's layers are.

    Each layer holds {"k", "v"}: [batch, n_head, length, head_dim] in the compute dtype; scanned layers stack
    them as [n_groups, batch, n_head, length, head_dim] under "layers".
    """
    shape = (batch, cfg.n_head, length, cfg.head_dim)
    if cfg.scan_layers:
        group = _group_size(cfg)
        shape = (cfg.n_layer // group, *shape)
        layers = {
            f"layer_{i}": {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)} for i in range(group)
        }
        return {"layers": layers}
    return {f"h_{i}": {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)} for i in range(cfg.n_layer)}


def grow_cache(cache: dict, length: int) -> dict:
    """`cache` (from `init_cache`) with its slot axis zero-padded to `length`; the filled slots keep their
    contents and indices. Decoding grows the cache in steps so that early tokens attend over short caches."""

    def grow(c: jax.Array) -> jax.Array:
        extra = length - c.shape[-2]  # slots are the second-last axis in both layouts
        if extra < 0:
            raise ValueError(f"cannot shrink a KV cache of {c.shape[-2]} slots to {length}")
        return jnp.pad(c, [(0, 0)] * (c.ndim - 2) + [(0, extra), (0, 0)])

    return jax.tree.map(grow, cache)
