"""The GPT-4V-style multimodal decoder: ViT patch features projected into the GPT's token stream (LLaVA layout).

Text marks where an image goes with a placeholder; the tokenizer side expands each placeholder into a run of N
copies of `image_token_id` (N = patches per image), so the sequence layout is static and a row may hold any
number of images anywhere (text only, one image + text, interleaved). The pixels travel token-aligned:
`patches` [B, T, P] holds, at the i-th position of a run, the i-th flattened patch of that image (zeros
elsewhere). This keeps packing, left padding and truncation ordinary per-token operations.

Forward pass (`MultimodalGPT.__call__`):
  1. the patches at placeholder positions are gathered into image slots [B, M, N, P] (M = T // N, as many
     images as a row can hold),
  2. the ViT encodes each slot -> [B, M, N, Dv]; the projector (two-layer GELU MLP, LLaVA-1.5) maps to the
     decoder width D,
  3. the k-th run of placeholders of a row receives slot k's projected patches in order; every other position
     gets its token embedding from the decoder's table,
  4. the GPT runs on these input embeddings (`input_embeds`; position embeddings are still added by the GPT).

A row without placeholders gets exactly its token embeddings, so text-only input gives the plain GPT's logits.
Targets that are placeholders carry no loss (`text_target_weights`): the model is never asked to predict pixels.

Parameters are three trees, {"decoder", "encoder", "projector"}, so that a pretrained GPT and a CLIP image tower
load as they are and two-stage training (projector only, then projector + decoder) freezes whole trees.
Decoding with images in the prompt is `gptx.sample.generate_with_images` (a model imports no sampler).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from gptx.models.attention import token_einsum
from gptx.models.gpt import GPT
from gptx.models.vision import ViT, patchify

PARTS = ("decoder", "encoder", "projector")


class Projector(nn.Module):
    """Vision-language connector: [B, N, Dv] -> GELU MLP (Dv -> hidden -> D) -> [B, N, D] (LLaVA-1.5)."""

    d_model: int
    hidden: int = 0  # 0: d_model
    init_std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = self.hidden or self.d_model
        init = nn.initializers.normal(self.init_std)
        w1 = self.param("fc_kernel", nn.with_logical_partitioning(init, ("embed", "mlp")), (x.shape[-1], hidden))
        b1 = self.param("fc_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (hidden,))
        w2 = self.param("proj_kernel", nn.with_logical_partitioning(init, ("mlp", "embed")), (hidden, self.d_model))
        b2 = self.param("proj_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (self.d_model,))
        x = x.astype(self.dtype)
        h = nn.gelu(token_einsum("btv,vh->bth", x, w1.astype(self.dtype)) + b1.astype(self.dtype))
        h = nn.with_logical_constraint(h, ("batch", "length", "act_mlp"))
        y = token_einsum("bth,hd->btd", h, w2.astype(self.dtype)) + b2.astype(self.dtype)
        return nn.with_logical_constraint(y, ("batch", "length", "act_embed"))


def image_slots(tokens: jax.Array, image_token_id: int) -> tuple[jax.Array, jax.Array]:
    """(is_image [B, T] bool, index [B, T] int32): a placeholder's rank among its row's placeholders.

    The rank k·N + j is the j-th patch of the row's k-th image, whatever text, padding or other images
    come before it (N consecutive placeholders form one image).
    """
    is_image = tokens == image_token_id
    index = jnp.cumsum(is_image.astype(jnp.int32), axis=1) - 1
    return is_image, jnp.where(is_image, index, 0)


def gather_images(patches: jax.Array, is_image: jax.Array, index: jax.Array, max_images: int, n_patches: int):
    """Token-aligned patches [B, T, P] -> image slots [B, M, N, P]; unused slots are zeros."""
    b, _, p = patches.shape
    dest = jnp.where(is_image, index, max_images * n_patches)  # out of range: dropped
    slots = jnp.zeros((b, max_images * n_patches, p), patches.dtype)
    slots = slots.at[jnp.arange(b)[:, None], dest].set(patches, mode="drop")
    return slots.reshape(b, max_images, n_patches, p)  # [B, M, N, P]


def text_target_weights(targets: jax.Array, weights: jax.Array, image_token_id: int) -> jax.Array:
    """The loss weights with every placeholder target removed."""
    return weights * (targets != image_token_id).astype(weights.dtype)


@dataclasses.dataclass(frozen=True)
class MultimodalGPT:
    """GPT decoder + ViT encoder + projector, as pure functions of params {"decoder", "encoder", "projector"}."""

    decoder: GPT
    encoder: ViT
    projector: Projector
    image_token_id: int

    @property
    def n_patches(self) -> int:
        return self.encoder.cfg.n_patches

    @property
    def patch_dim(self) -> int:
        return self.encoder.cfg.patch_dim

    def init(self, rng: jax.Array, seq_len: int) -> dict[str, Any]:
        """Logically annotated params of the three parts."""
        r_dec, r_enc, r_proj = jax.random.split(rng, 3)
        n, p, dv = self.n_patches, self.patch_dim, self.encoder.cfg.width
        return {
            "decoder": self.decoder.init(r_dec, jnp.zeros((1, seq_len), jnp.int32))["params"],
            "encoder": self.encoder.init(r_enc, jnp.zeros((1, n, p), jnp.float32))["params"],
            "projector": self.projector.init(r_proj, jnp.zeros((1, n, dv), jnp.float32))["params"],
        }

    def encode_images(self, params: dict[str, Any], slots: jax.Array) -> jax.Array:
        """Image slots [B, M, N, P] -> projected patch features [B, M·N, D] in the decoder's width."""
        b, m, n, p = slots.shape
        feats = self.encoder.apply({"params": params["encoder"]}, slots.reshape(b * m, n, p))  # [B·M, N, Dv]
        projected = self.projector.apply({"params": params["projector"]}, feats)  # [B·M, N, D]
        return projected.reshape(b, m * n, -1)

    def input_embeds(self, params: dict[str, Any], tokens: jax.Array, patches: jax.Array | None) -> jax.Array:
        """Decoder input embeddings [B, T, D]: projected image patches at placeholders, token embeddings elsewhere.

        tokens [B, T] int32 (any padding side); patches [B, T, P] token-aligned pixels, or None for text only.
        """
        wte = nn.with_logical_constraint(params["decoder"]["wte"], ("vocab", None))  # as the GPT gathers rows
        embeds = jnp.take(wte, tokens, axis=0)  # [B, T, D]
        if patches is None:
            return embeds
        max_images = tokens.shape[1] // self.n_patches  # as many images as a row can hold: none is ever dropped
        if max_images == 0:
            return embeds
        is_image, index = image_slots(tokens, self.image_token_id)
        slots = gather_images(patches, is_image, index, max_images, self.n_patches)
        images = self.encode_images(params, slots)  # [B, M·N, D]
        at_position = jnp.take_along_axis(images, index[..., None], axis=1)  # [B, T, D]
        return jnp.where(is_image[..., None], at_position.astype(embeds.dtype), embeds)

    def __call__(
        self,
        params: dict[str, Any],
        tokens: jax.Array,
        patches: jax.Array | None,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        rng: jax.Array | None = None,
        return_hidden: bool = False,
    ) -> jax.Array:
        """Logits [B, T, V] float32 (or hidden states [B, T, D]) of the decoder over text and images."""
        embeds = self.input_embeds(params, tokens, patches)
        return self.decoder.apply(
            {"params": params["decoder"]},
            tokens,
            positions,
            segment_ids,
            deterministic=deterministic,
            return_hidden=return_hidden,
            input_embeds=embeds,
            rngs=None if deterministic else {"dropout": rng},
        )


# ------------------------------------------------------------------------------------------------------------
# Host-side layout: text with image markers -> token ids with placeholder runs, and token-aligned patches


def layout(pieces: Sequence[str | None], encode, image_token_id: int, n_patches: int) -> list[int]:
    """Token ids of text pieces and images in order: a str is encoded, None stands for one image (N placeholders)."""
    ids: list[int] = []
    for piece in pieces:
        if piece is None:
            ids.extend([image_token_id] * n_patches)
        elif piece:
            ids.extend(encode(piece))
    return ids


def place_patches(
    tokens: np.ndarray, images: Sequence[np.ndarray], image_token_id: int, patch_size: int, channels: int
) -> np.ndarray:
    """Token-aligned patches [T, P] of one row: the k-th placeholder run gets images[k] ([H, W, C]) patch by patch.

    Positions that are not placeholders hold zeros. Raises ValueError when the number of placeholders is not
    (number of images) x (patches per image).
    """
    is_image = np.asarray(tokens) == image_token_id
    out = np.zeros((len(tokens), patch_size * patch_size * channels), np.float32)
    patches = [patchify(np.asarray(im, np.float32), patch_size) for im in images]  # [N, P] each
    n_placed = sum(len(p) for p in patches)
    if is_image.sum() != n_placed:
        raise ValueError(f"{int(is_image.sum())} image placeholders for {len(images)} image(s) ({n_placed} patches)")
    if patches:
        out[is_image] = np.concatenate(patches)
    return out
