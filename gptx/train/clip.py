"""Contrastive image-text alignment (CLIP, Radford et al., 2021; SigLIP, Zhai et al., 2023) through the one loop.

A ViT of config.vision and a GPT text tower of config.model are trained on matched image-caption pairs with
CLIP's symmetric cross-entropy or SigLIP's pairwise sigmoid loss (`vision.loss`) over the B x B similarities of
a batch. Afterwards the held-out digits are classified zero-shot by prompted class names.

Gradient accumulation: the contrastive loss does not decompose over rows (every pair is contrasted with every
other pair of its batch), so `config.train.grad_accum` = k contrasts each micro-batch of B / k pairs within
itself and averages the k micro-batch losses, as contrastive methods do without gradient caching. k = 1 is
exactly the loss over the whole batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gptx import config as config_lib
from gptx import flops as flops_lib
from gptx.data import image_text
from gptx.data import tokenizer as tokenizer_lib
from gptx.models import clip as clip_lib
from gptx.models.gpt import GPTConfig
from gptx.models.vision import ViTConfig
from gptx.train import logs, loop
from gptx.train import step as step_lib
from gptx.train.state import TrainState, lr_schedule, make_optimizer
from gptx.train.vision_eval import zero_shot_classify

Images = tuple[image_text.ImageBank, np.ndarray, np.ndarray]  # (bank, train digit indices, held-out digit indices)


def make_clip(cfg: ml_collections.ConfigDict) -> clip_lib.CLIP:
    """The two towers: a ViT of config.vision, a GPT text tower of config.model."""
    v = cfg.vision
    return clip_lib.CLIP(
        ViTConfig.from_config(cfg),
        GPTConfig.from_config(cfg.model),
        embed_dim=v.embed_dim,
        loss=v.loss,
        init_temperature=v.init_temperature,
        max_logit_scale=v.max_logit_scale,
    )


def embed_pairs(params: Any, batch: step_lib.Batch, rng: jax.Array | None, model: clip_lib.CLIP):
    """(image embeddings [B, E], text embeddings [B, E], logit scale, logit bias); rng None: dropout off."""
    return model.apply(
        {"params": params},
        batch["patches"],
        batch["tokens"],
        batch["lengths"][:, 0],
        deterministic=rng is None,
        rngs=None if rng is None else {"dropout": rng},
    )


def loss(model: clip_lib.CLIP) -> step_lib.Loss:
    """The contrastive loss of a batch of B matched pairs (`patches`, `tokens`, `lengths`, `labels`).

    A micro-batch of b pairs returns its own contrastive loss (its b x b similarities) times b / B, its share of
    the batch (norms `pairs` = B), so accumulation averages micro-batch losses and one micro-batch (b = B) is
    exactly `clip_lib.contrastive_loss` of the batch. Metrics (scaled alike, so they add up to batch means):
    `logit_scale`, `retrieval_accuracy` within the micro-batch, SigLIP's `logit_bias`.
    """

    def fn(params, batch, rng, norms):
        image_emb, text_emb, scale, bias = embed_pairs(params, batch, rng, model)
        share = batch["lengths"].shape[0] / jnp.maximum(norms["pairs"], 1.0)
        value = clip_lib.contrastive_loss(model.loss, image_emb, text_emb, scale, bias)
        metrics = {
            "logit_scale": scale,
            "retrieval_accuracy": clip_lib.retrieval_accuracy(image_emb, text_emb, batch["labels"][:, 0]),
        }
        if model.loss == "siglip":
            metrics["logit_bias"] = bias
        return value * share, {k: m * share for k, m in metrics.items()}

    return step_lib.Loss(fn=fn, norms=lambda batch: {"pairs": jnp.asarray(batch["lengths"].shape[0], jnp.float32)})


def make_eval_step(model: clip_lib.CLIP):
    """(loss x pairs, pairs): the loop averages the contrastive loss over held-out batches."""
    return step_lib.make_eval_step(loss(model), "pairs")


def flops_per_step(model: clip_lib.CLIP, batch: int, text_len: int) -> float:
    """6 x matmul parameters x tokens of both towers (no LM head in the text tower)."""
    vit = dataclasses.replace(model.vit.block_config(), vocab_size=model.vit.patch_dim)
    text = dataclasses.replace(model.text, vocab_size=0)
    per_pair = flops_lib.flops_per_token(vit, model.vit.n_patches) * model.vit.n_patches
    return batch * (per_pair + flops_lib.flops_per_token(text, text_len) * text_len)


def make_trainer(
    cfg: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer, images: Images
) -> tuple[loop.Trainer, clip_lib.CLIP]:
    """(Trainer, model) of contrastive training on the training digits (and photos), eval on held-out digits."""
    if tok.vocab_size > cfg.model.vocab_size:
        raise config_lib.ConfigError(
            f"config.model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tok.vocab_size} pieces"
        )
    bank, train_idx, test_idx = images
    model = make_clip(cfg)
    t, v = cfg.train, cfg.vision
    tx = make_optimizer(t)
    refs = [("digit", int(i)) for i in train_idx] + [("photo", j) for j in range(len(bank.photos))]
    held_out = [("digit", int(i)) for i in test_idx]
    dummy = (
        jnp.zeros((1, model.vit.n_patches, model.vit.patch_dim), jnp.float32),
        jnp.zeros((1, v.text_len), jnp.int32),
        jnp.ones((1,), jnp.int32),
    )

    def init_fn(rng):
        params = model.init(rng, *dummy)["params"]
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    def data(items, train):
        return image_text.clip_dataset(
            bank,
            items,
            tok,
            text_len=v.text_len,
            batch_size=t.batch_size,
            seed=cfg.data.seed,
            train=train,
            worker_count=cfg.data.worker_count if train else 0,
        )

    trainer = loop.Trainer(
        init_fn=init_fn,
        train_step=step_lib.make_train_step(loss(model), grad_accum=t.grad_accum, lr_fn=lr_schedule(t)),
        train_data=data(refs, True),
        eval_step=make_eval_step(model),
        eval_data=lambda: data(held_out, False),
        flops_per_step=flops_per_step(model, t.batch_size, v.text_len),
        tokens_per_step=t.batch_size * (model.vit.n_patches + v.text_len),
    )
    return trainer, model


def run(
    cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh, tok: tokenizer_lib.Tokenizer, images: Images
) -> dict[str, Any]:
    """Trains (or resumes) the contrastive model, then classifies the held-out digits zero-shot."""
    trainer, model = make_trainer(cfg, tok, images)
    bank, _, test_idx = images
    result = loop.train(trainer, cfg, workdir, mesh)
    if cfg.vision.eval_limit:
        test_idx = test_idx[: cfg.vision.eval_limit]
    params = result.state.params
    zs = zero_shot_classify(model, params, bank, test_idx, tok, cfg, mesh)
    seen = zero_shot_classify(model, params, bank, test_idx, tok, cfg, mesh, image_text.CAPTION_TEMPLATES)
    last = {k: v for row in logs.read_metrics(workdir) for k, v in row.items()}  # the whole run, resumed or not
    out = {
        "task": "clip",
        "loss_kind": cfg.vision.loss,
        "steps": int(result.state.step),
        "final_train_loss": last.get("loss"),
        "final_eval_loss": last.get("eval_loss"),
        "logit_scale": float(clip_lib.logit_scale(params["logit_scale"], cfg.vision.max_logit_scale)),
        "zero_shot": {k: v for k, v in zs.items() if k != "predictions"},
        "zero_shot_training_templates": {k: v for k, v in seen.items() if k != "predictions"},
        "test_digits": test_idx.tolist(),
        "predictions": zs["predictions"],
    }
    print(
        f"zero-shot accuracy on {zs['examples']} held-out digits: {zs['accuracy']:.3f} with unseen prompt templates, "
        f"{seen['accuracy']:.3f} with the training captions' templates (chance 0.100)"
    )
    return out
