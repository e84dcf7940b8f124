"""Contrastive image-text alignment: CLIP (Radford et al., 2021) and SigLIP (Zhai et al., 2023).

Two towers map a batch of B images and their B captions into one joint space of `embed_dim` features:
the image tower is a ViT whose patch features are mean-pooled, the text tower a GPT whose hidden state at the
caption's last token (EOS, as in CLIP) is taken; each is projected linearly and L2-normalised. The B x B cosine
similarities, scaled by a learned temperature, are then scored as

  CLIP:   symmetric cross-entropy, image->text over rows and text->image over columns, matched pairs on the diagonal
  SigLIP: an independent binary logistic loss per pair, -1/B Σ_i Σ_j log σ(z_ij (t x_i·y_j + b)), z = ±1

The temperature is a learned log-scale, clamped so the logit scale never exceeds `max_logit_scale` (CLIP: 100).
Zero-shot classification embeds prompted class names ("a photo of the digit seven.") and picks the class whose
(template-averaged) text embedding is closest to the image's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from gptx.models.gpt import GPT, GPTConfig
from gptx.models.vision import ViT, ViTConfig

LOSSES = ("clip", "siglip")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def logit_scale(log_scale: jax.Array, max_scale: float) -> jax.Array:
    """exp(log_scale) clamped at `max_scale`; above the clamp the scale has no gradient (CLIP clips it at 100)."""
    return jnp.exp(jnp.minimum(log_scale, math.log(max_scale)))


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array) -> jax.Array:
    """CLIP's symmetric cross-entropy of L2-normalised embeddings [B, E]; pair i is (image i, text i)."""
    logits = scale * jnp.einsum("ie,je->ij", image_emb, text_emb).astype(jnp.float32)  # [B images, B texts]
    labels = jnp.arange(logits.shape[0])
    image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
    return 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))


def siglip_loss(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """SigLIP's pairwise sigmoid loss, summed over the B texts and averaged over the B images."""
    logits = scale * jnp.einsum("ie,je->ij", image_emb, text_emb).astype(jnp.float32) + bias
    z = 2.0 * jnp.eye(logits.shape[0]) - 1.0  # +1 on matched pairs, -1 elsewhere
    return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / logits.shape[0]


def contrastive_loss(kind: str, image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, bias: jax.Array):
    """The loss named by `kind` (clip | siglip); CLIP has no bias."""
    if kind == "siglip":
        return siglip_loss(image_emb, text_emb, scale, bias)
    if kind == "clip":
        return clip_loss(image_emb, text_emb, scale)
    raise ValueError(f"unknown contrastive loss {kind!r}; one of {', '.join(LOSSES)}")


def retrieval_accuracy(image_emb: jax.Array, text_emb: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Share of images whose most similar text in the batch is their own caption, or, given class labels [B]
    (-1: no class), a caption of the same class (captions made from labels repeat within a batch)."""
    best = jnp.argmax(jnp.einsum("ie,je->ij", image_emb, text_emb), axis=1)
    own = best == jnp.arange(best.shape[0])
    if labels is not None:
        labels = jnp.asarray(labels)
        own |= (labels[best] == labels) & (labels >= 0)
    return jnp.mean(own)


def class_embeddings(prompt_emb: jax.Array) -> jax.Array:
    """[K classes, M templates, E] prompt embeddings -> [K, E]: CLIP's prompt ensemble (mean, renormalised)."""
    return l2_normalize(jnp.mean(prompt_emb, axis=1))


def zero_shot_predict(image_emb: jax.Array, class_emb: jax.Array) -> jax.Array:
    """Class index [B] of each image: the class embedding of highest cosine similarity."""
    return jnp.argmax(jnp.einsum("be,ke->bk", image_emb, class_emb), axis=-1)


class CLIP(nn.Module):
    """Image tower (ViT), text tower (GPT), linear projections into the joint space, temperature (and bias).

    Methods: `encode_image(patches [B, N, P])` and `encode_text(tokens [B, L], lengths [B])` return
    L2-normalised [B, embed_dim]; `__call__` returns (image_emb, text_emb, logit scale, logit bias).
    """

    vit: ViTConfig
    text: GPTConfig
    embed_dim: int = 64
    loss: str = "clip"
    init_temperature: float = 0.07  # CLIP: logit scale starts at 1 / 0.07
    max_logit_scale: float = 100.0
    siglip_init_scale: float = 10.0  # SigLIP: t' = log 10, b = -10
    siglip_init_bias: float = -10.0

    def setup(self):
        self.image_tower = ViT(self.vit)
        self.text_tower = GPT(self.text)

        def projection(name: str, width: int):
            init = nn.initializers.normal(width**-0.5)  # CLIP's init of its projections
            return self.param(name, nn.with_logical_partitioning(init, ("embed", "joint")), (width, self.embed_dim))

        self.image_proj_kernel = projection("image_proj_kernel", self.vit.width)
        self.text_proj_kernel = projection("text_proj_kernel", self.text.d_model)
        siglip = self.loss == "siglip"
        scale0 = math.log(self.siglip_init_scale if siglip else 1.0 / self.init_temperature)
        self.log_scale = self.param("logit_scale", nn.initializers.constant(scale0), ())
        if siglip:
            self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.siglip_init_bias), ())

    def encode_image(self, patches: jax.Array, *, deterministic: bool = True) -> jax.Array:
        feats = self.image_tower(patches, deterministic=deterministic)  # [B, N, D]
        pooled = jnp.mean(feats, axis=1)  # global average pooling over patches
        return l2_normalize(pooled.astype(jnp.float32) @ self.image_proj_kernel.astype(jnp.float32))

    def encode_text(self, tokens: jax.Array, lengths: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """tokens [B, L] right-padded, lengths [B]: the causal tower's state at token lengths-1 (the EOS)."""
        hidden = self.text_tower(tokens, deterministic=deterministic, return_hidden=True)  # [B, L, D]
        last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [B, D]
        return l2_normalize(last.astype(jnp.float32) @ self.text_proj_kernel.astype(jnp.float32))

    def temperature(self) -> tuple[jax.Array, jax.Array]:
        """(clamped logit scale, logit bias; 0 for CLIP)."""
        bias = self.logit_bias if self.loss == "siglip" else jnp.zeros((), jnp.float32)
        return logit_scale(self.log_scale, self.max_logit_scale), bias

    def __call__(self, patches, tokens, lengths, *, deterministic: bool = True):
        image_emb = self.encode_image(patches, deterministic=deterministic)
        text_emb = self.encode_text(tokens, lengths, deterministic=deterministic)
        return (image_emb, text_emb, *self.temperature())
