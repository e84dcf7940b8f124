"""The Vision Transformer image encoder (Dosovitskiy et al., 2021) in Flax linen.

An image [H, W, C] is cut into (H/p)·(W/p) non-overlapping p x p patches; each flattened patch (p·p·C pixels) is
mapped linearly to the model width (the same map as a stride-p convolution), a learned position embedding is
added, and pre-LN Transformer blocks with bidirectional attention follow, then a final LayerNorm. The output is
one feature per patch, [B, N, D]: CLIP pools them into an image embedding, the multimodal decoder projects them
into its token stream.

The blocks are GPT-2's (the same MLP and LayerNorms, `gptx.models.gpt`) without the causal mask; parameters carry
the same logical axis names as the decoder's, so `gptx.mesh` shards both under one set of rules.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from gptx.models.attention import token_einsum
from gptx.models.gpt import MLP, GPTConfig, _layer_norm


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Hashable ViT hyper-parameters; sizes in pixels (image, patch) and features (width, mlp_dim)."""

    image_size: int = 16
    patch_size: int = 4
    channels: int = 3
    width: int = 64
    depth: int = 2
    n_head: int = 4
    mlp_dim: int = 0  # 0: 4 * width
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> ViTConfig:
        """From a full gptx config: `config.vision` sizes, `config.model` dtypes and init."""
        v, m = cfg.vision, cfg.model
        return cls(
            image_size=v.image_size,
            patch_size=v.patch_size,
            channels=v.channels,
            width=v.width,
            depth=v.depth,
            n_head=v.n_head,
            mlp_dim=v.mlp_dim,
            dropout=v.dropout,
            layer_norm_eps=m.layer_norm_eps,
            init_std=m.init_std,
            dtype=m.dtype,
            param_dtype=m.param_dtype,
        )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        """Patch tokens per image, N = (image_size / patch_size)²."""
        return self.grid**2

    @property
    def patch_dim(self) -> int:
        """Pixels of one flattened patch, P = patch_size² · channels."""
        return self.patch_size**2 * self.channels

    def block_config(self) -> GPTConfig:
        """The blocks' hyper-parameters in the decoder's terms (pre-LN GPT-2 blocks, no vocabulary)."""
        return GPTConfig(
            vocab_size=1,
            block_size=self.n_patches,
            n_layer=self.depth,
            n_head=self.n_head,
            d_model=self.width,
            d_ff=self.mlp_dim,
            arch="gpt2",
            dropout=self.dropout,
            attn_dropout=0.0,
            layer_norm_eps=self.layer_norm_eps,
            init_std=self.init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )


def patchify(images, patch_size: int):
    """[..., H, W, C] images -> [..., N, p·p·C] patches, in raster order of the patch grid.

    Works on numpy and jax arrays alike (the data pipeline places patches on the host). Each patch is
    flattened as (row, column, channel), so patch-embedding kernel rows follow a conv kernel's [p, p, C] layout.
    """
    *lead, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = images.reshape(*lead, h // p, p, w // p, p, c)  # [..., Gh, p, Gw, p, C]
    n = len(lead)
    x = x.transpose(*range(n), n, n + 2, n + 1, n + 3, n + 4)  # [..., Gh, Gw, p, p, C]
    return x.reshape(*lead, (h // p) * (w // p), p * p * c)


def unpatchify(patches, patch_size: int, channels: int):
    """Inverse of `patchify` for square images: [..., N, p·p·C] -> [..., H, W, C]."""
    *lead, n, _ = patches.shape
    g, p = int(round(np.sqrt(n))), patch_size
    x = patches.reshape(*lead, g, g, p, p, channels)  # [..., Gh, Gw, p, p, C]
    k = len(lead)
    x = x.transpose(*range(k), k, k + 2, k + 1, k + 3, k + 4)  # [..., Gh, p, Gw, p, C]
    return x.reshape(*lead, g * p, g * p, channels)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with the decoder's parameter layout ([D, 3, N, H], [N, H, D])."""

    n_head: int
    init_std: float = 0.02
    out_init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        n, h = self.n_head, d // self.n_head
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        w_qkv = self.param(
            "qkv_kernel",
            nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("embed", "qkv", "heads", "kv")),
            (d, 3, n, h),
            self.param_dtype,
        )
        b_qkv = self.param(
            "qkv_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("qkv", "heads", "kv")), (3, n, h)
        )
        qkv = token_einsum("btd,dknh->btknh", x, w_qkv.astype(self.dtype)) + b_qkv.astype(self.dtype)
        q, k, v = (nn.with_logical_constraint(qkv[:, :, i], ("batch", "length", "act_heads", "kv")) for i in range(3))
        y = jax.nn.dot_product_attention(q, k, v)  # every patch sees every patch of its image
        y = nn.with_logical_constraint(y, ("batch", "length", "act_heads", "kv"))  # [B, N, heads, H]
        w_out = self.param(
            "out_kernel",
            nn.with_logical_partitioning(nn.initializers.normal(self.out_init_std), ("heads", "kv", "embed")),
            (n, h, d),
            self.param_dtype,
        )
        b_out = self.param("out_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (d,))
        y = token_einsum("btnh,nhd->btd", y, w_out.astype(self.dtype)) + b_out.astype(self.dtype)
        return nn.with_logical_constraint(y, ("batch", "length", "act_embed"))


class EncoderBlock(nn.Module):
    """Pre-LN block: x = x + Attn(LN(x)); x = x + MLP(LN(x))."""

    cfg: GPTConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        attn = SelfAttention(
            cfg.n_head,
            init_std=cfg.init_std,
            out_init_std=cfg.init_std / np.sqrt(2 * cfg.n_layer),  # GPT-2's residual scaling, as in the decoder
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="attn",
        )
        y = attn(_layer_norm(cfg, "ln_1")(x))
        x = x + nn.Dropout(cfg.dropout)(y, deterministic=self.deterministic)
        x = x + MLP(cfg, deterministic=self.deterministic, name="mlp")(_layer_norm(cfg, "ln_2")(x))
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class ViT(nn.Module):
    """patches [B, N, P] (from `patchify`) -> patch features [B, N, width], after a final LayerNorm."""

    cfg: ViTConfig

    @nn.compact
    def __call__(self, patches: jax.Array, *, deterministic: bool = True) -> jax.Array:
        cfg, blocks = self.cfg, self.cfg.block_config()
        if patches.shape[-2:] != (cfg.n_patches, cfg.patch_dim):
            raise ValueError(f"ViT expects patches [..., {cfg.n_patches}, {cfg.patch_dim}], got {patches.shape}")
        kernel = self.param(
            "patch_kernel",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("pixels", "embed")),
            (cfg.patch_dim, cfg.width),
            blocks.param_dtype,
        )
        bias = self.param("patch_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (cfg.width,))
        wpe = self.param(
            "wpe",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("positions", "embed")),
            (cfg.n_patches, cfg.width),
            blocks.param_dtype,
        )
        dtype = blocks.dtype
        x = token_einsum("btp,pd->btd", patches.astype(dtype), kernel.astype(dtype))
        x = x + bias.astype(dtype) + wpe.astype(dtype)[None]
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        for i in range(cfg.depth):
            x = EncoderBlock(blocks, deterministic, name=f"block_{i}")(x)
        return _layer_norm(blocks, "ln_f")(x)
