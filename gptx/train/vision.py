"""GPT-4V-style vision training through the one loop: `train` with a config whose `vision.task` is set.

  clip        a ViT and a GPT text tower (config.model) aligned contrastively on image-caption pairs (CLIP's
              symmetric cross-entropy or SigLIP's sigmoid loss, `vision.loss`); afterwards, zero-shot
              classification of the held-out digits by prompted class names.
  multimodal  the ViT's patch features, through an MLP projector, enter a GPT decoder's (config.model) token
              stream at image placeholders. Two stages as in LLaVA (Liu et al., 2023): stage 1 trains only the
              projector (`vision.projector_steps` steps at `vision.projector_lr`, WORKDIR/stage1_projector),
              stage 2 the projector and the decoder (`train.steps`, WORKDIR/stage2_full). The image encoder is
              always frozen; it comes from a clip run (`vision.encoder_init`) and the decoder from a `train` run
              (`vision.decoder_init`). Afterwards, held-out digits are answered and captioned by decoding through
              gptx.sample, zero-shot and with interleaved few-shot examples.

Each stage is a step function plugged into gptx/train/loop.py, so both resume from their checkpoints. Results go
to WORKDIR/vision_results.json.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from gptx import config as config_lib
from gptx import flops as flops_lib
from gptx import mesh as mesh_lib
from gptx.data import image_text
from gptx.data import tokenizer as tokenizer_lib
from gptx.models import clip as clip_lib
from gptx.models.gpt import GPT, GPTConfig
from gptx.models.multimodal import PARTS, MultimodalGPT, Projector, text_target_weights
from gptx.models.vision import ViT, ViTConfig
from gptx.train import finetune, logs, loop, pretrain
from gptx.train.state import TrainState, lr_schedule, make_optimizer
from gptx.train.vision_eval import evaluate_multimodal, zero_shot_classify

TASKS = ("clip", "multimodal")
RESULTS = "vision_results.json"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = (("stage1_projector", ("projector",)), ("stage2_full", ("projector", "decoder")))


def validate_vision(cfg: ml_collections.ConfigDict) -> None:
    """ConfigError naming the key for a vision section that cannot run."""
    v = cfg.vision
    if v.task not in TASKS:
        raise config_lib.ConfigError(f"config.vision.task={v.task!r} is not one of {', '.join(TASKS)}")
    if v.loss not in clip_lib.LOSSES:
        raise config_lib.ConfigError(f"config.vision.loss={v.loss!r} is not one of {', '.join(clip_lib.LOSSES)}")
    unknown = [s for s in sources(cfg) if s not in image_text.SOURCES]
    if unknown or "digits" not in sources(cfg):
        raise config_lib.ConfigError(
            f"config.vision.sources={v.sources!r}: needs digits, may add photos; unknown {unknown}"
        )
    for key in ("image_size", "patch_size", "channels", "width", "depth", "n_head", "embed_dim", "text_len"):
        if v[key] <= 0:
            raise config_lib.ConfigError(f"config.vision.{key}={v[key]} must be positive")
    if v.image_size % v.patch_size:
        raise config_lib.ConfigError(f"config.vision.image_size={v.image_size} is not divisible by patch_size")
    if v.width % v.n_head:
        raise config_lib.ConfigError(f"config.vision.width={v.width} is not divisible by n_head={v.n_head}")
    if v.channels not in (1, 3):
        raise config_lib.ConfigError(f"config.vision.channels={v.channels} must be 1 or 3")
    if not 0.0 < v.test_fraction < 1.0:
        raise config_lib.ConfigError(f"config.vision.test_fraction={v.test_fraction} must be in (0, 1)")
    if v.task == "clip" and v.text_len > cfg.model.block_size:
        raise config_lib.ConfigError(f"config.vision.text_len={v.text_len} exceeds config.model.block_size")
    if v.projector_steps < 0 or v.few_shot < 0 or v.eval_limit < 0 or v.photo_repeats < 0:
        raise config_lib.ConfigError("config.vision.{projector_steps,few_shot,eval_limit,photo_repeats} must be >= 0")
    n_patches = ViTConfig.from_config(cfg).n_patches
    images = max(v.max_interleaved, v.few_shot + 1)  # an interleaved training record, or a few-shot prompt
    if v.task == "multimodal" and images * (n_patches + 6) + 8 > seq_len(cfg):
        raise config_lib.ConfigError(
            f"config.data.seq_len={seq_len(cfg)} is too short for {images} images of {n_patches} tokens with their "
            "text (config.vision.max_interleaved, few_shot + 1); lower them or raise the sequence length"
        )
    if cfg.train.grad_accum != 1:
        raise config_lib.ConfigError("config.train.grad_accum must be 1 for vision runs")


def sources(cfg: ml_collections.ConfigDict) -> list[str]:
    return [s.strip() for s in cfg.vision.sources.split(",") if s.strip()]


def seq_len(cfg: ml_collections.ConfigDict) -> int:
    return config_lib.seq_len(cfg)


def data_dir(cfg: ml_collections.ConfigDict) -> str:
    root = cfg.vision.data_dir
    return os.path.normpath(root if os.path.isabs(root) else os.path.join(REPO, root))


def load_images(cfg: ml_collections.ConfigDict) -> tuple[image_text.ImageBank, np.ndarray, np.ndarray]:
    """(image bank, train digit indices, held-out digit indices)."""
    v = cfg.vision
    bank = image_text.load_bank(data_dir(cfg), sources(cfg), v.image_size, v.patch_size, v.channels)
    bank.max_rotation, bank.max_shift = v.max_rotation, v.max_shift
    train_idx, test_idx = image_text.split_digits(len(bank.labels), v.test_fraction, cfg.data.seed)
    return bank, train_idx, test_idx


def resolve_tokenizer(cfg: ml_collections.ConfigDict, workdir: str) -> tokenizer_lib.Tokenizer:
    """config.data.tokenizer, else the tokenizer of the decoder's or encoder's run, else WORKDIR's (trained on
    config.data.corpus if missing)."""
    if cfg.data.tokenizer:
        return tokenizer_lib.Tokenizer.load(cfg.data.tokenizer)
    for run in (cfg.vision.decoder_init, cfg.vision.encoder_init):
        if run and os.path.exists(os.path.join(run, "tokenizer.model")):
            return tokenizer_lib.Tokenizer.load(os.path.join(run, "tokenizer.model"))
    return pretrain.load_tokenizer(cfg, workdir)


# ------------------------------------------------------------------------------------------------------------
# Contrastive alignment


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


def clip_losses(params, batch, rng, model: clip_lib.CLIP, deterministic: bool):
    """(contrastive loss, metrics) of a batch of B matched pairs; the B x B similarities use the global batch."""
    image_emb, text_emb, scale, bias = model.apply(
        {"params": params},
        batch["patches"],
        batch["tokens"],
        batch["lengths"][:, 0],
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )
    loss = clip_lib.contrastive_loss(model.loss, image_emb, text_emb, scale, bias)
    metrics = {
        "loss": loss,
        "logit_scale": scale,
        "retrieval_accuracy": clip_lib.retrieval_accuracy(image_emb, text_emb, batch["labels"][:, 0]),
    }
    if model.loss == "siglip":
        metrics["logit_bias"] = bias
    return loss, metrics


def make_clip_train_step(model: clip_lib.CLIP, lr_fn=None):
    """Pure `(state, batch, rng) -> (state, metrics)`: one optimizer step on the contrastive loss."""
    grad_fn = jax.value_and_grad(clip_losses, has_aux=True)

    def step(state: TrainState, batch, rng):
        (_, metrics), grads = grad_fn(state.params, batch, rng, model, False)
        metrics["grad_norm"] = optax.global_norm(grads)
        if lr_fn is not None:
            metrics["lr"] = lr_fn(state.step)
        return state.apply_gradients(grads=grads), metrics

    return step


def make_clip_eval_step(model: clip_lib.CLIP):
    """(loss x pairs, pairs): the loop averages the contrastive loss over held-out batches."""

    def step(params, batch):
        loss, _ = clip_losses(params, batch, None, model, True)
        n = batch["lengths"].shape[0]
        return loss * n, jnp.asarray(n, jnp.float32)

    return step


def clip_flops_per_step(model: clip_lib.CLIP, batch: int, text_len: int) -> float:
    """6 x matmul parameters x tokens of both towers (no LM head in the text tower)."""
    vit = dataclasses.replace(model.vit.block_config(), vocab_size=model.vit.patch_dim)
    text = dataclasses.replace(model.text, vocab_size=0)
    per_pair = flops_lib.flops_per_token(vit, model.vit.n_patches) * model.vit.n_patches
    return batch * (per_pair + flops_lib.flops_per_token(text, text_len) * text_len)


def clip_trainer(cfg, tok, bank: image_text.ImageBank, train_idx, test_idx) -> tuple[loop.Trainer, clip_lib.CLIP]:
    """(Trainer, model) of contrastive training on the training digits (and photos), eval on held-out digits."""
    if tok.vocab_size > cfg.model.vocab_size:
        raise config_lib.ConfigError(
            f"config.model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tok.vocab_size} pieces"
        )
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
        train_step=make_clip_train_step(model, lr_schedule(t)),
        train_data=data(refs, True),
        eval_step=make_clip_eval_step(model),
        eval_data=lambda: data(held_out, False),
        flops_per_step=clip_flops_per_step(model, t.batch_size, v.text_len),
        tokens_per_step=t.batch_size * (model.vit.n_patches + v.text_len),
    )
    return trainer, model


def run_clip(cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh) -> dict[str, Any]:
    """Trains (or resumes) the contrastive model, then classifies the held-out digits zero-shot."""
    tok = resolve_tokenizer(cfg, workdir)
    bank, train_idx, test_idx = load_images(cfg)
    trainer, model = clip_trainer(cfg, tok, bank, train_idx, test_idx)
    result = loop.train(trainer, cfg, workdir, mesh)
    if cfg.vision.eval_limit:
        test_idx = test_idx[: cfg.vision.eval_limit]
    zs = zero_shot_classify(model, result.state.params, bank, test_idx, tok, cfg, mesh)
    seen = zero_shot_classify(model, result.state.params, bank, test_idx, tok, cfg, mesh, image_text.CAPTION_TEMPLATES)
    last = {k: v for row in logs.read_metrics(workdir) for k, v in row.items()}  # the whole run, resumed or not
    out = {
        "task": "clip",
        "loss_kind": cfg.vision.loss,
        "steps": int(result.state.step),
        "final_train_loss": last.get("loss"),
        "final_eval_loss": last.get("eval_loss"),
        "logit_scale": float(clip_lib.logit_scale(result.state.params["logit_scale"], cfg.vision.max_logit_scale)),
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


# ------------------------------------------------------------------------------------------------------------
# The multimodal decoder


def image_token_id(tok: tokenizer_lib.Tokenizer) -> int:
    """The placeholder id: the first id after the tokenizer's pieces."""
    return tok.vocab_size


def make_multimodal(cfg: ml_collections.ConfigDict, image_token: int) -> MultimodalGPT:
    """Decoder of config.model, ViT of config.vision, projector between their widths."""
    dec = GPTConfig.from_config(cfg.model)
    if image_token >= dec.vocab_size:
        raise config_lib.ConfigError(
            f"config.model.vocab_size={dec.vocab_size} leaves no room for the image placeholder token (id "
            f"{image_token}, after the tokenizer's pieces); set it to at least {image_token + 1}"
        )
    vit = ViTConfig.from_config(cfg)
    projector = Projector(dec.d_model, init_std=dec.init_std, dtype=dec.dtype, param_dtype=dec.param_dtype)
    return MultimodalGPT(GPT(dec), ViT(vit), projector, image_token)


def stage_optimizer(t: ml_collections.ConfigDict, trainable: tuple[str, ...]) -> optax.GradientTransformation:
    """The config's AdamW, its updates zeroed for every part not in `trainable` (those stay exactly as they are).

    Frozen parts receive zero gradients, so their Adam moments stay zero; weight decay does not reach them.
    """
    return optax.chain(make_optimizer(t), optax.freeze({part: part not in trainable for part in PARTS}))


def multimodal_loss_sum(trainable, frozen, batch, rng, model: MultimodalGPT, deterministic: bool):
    """(summed next-token cross-entropy over text targets, summed weights); placeholder targets carry none."""
    logits = model(
        {**frozen, **trainable},
        batch["inputs"],
        batch["patches"],
        batch["positions"],
        batch["segment_ids"],
        deterministic=deterministic,
        rng=rng,
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    w = text_target_weights(batch["targets"], batch["weights"], model.image_token_id)
    return jnp.sum(ce * w), jnp.sum(w)


def make_multimodal_train_step(model: MultimodalGPT, trainable: tuple[str, ...], lr_fn=None):
    """Pure step: gradients of the mean text loss w.r.t. the trainable parts only (no backward into frozen
    weights), applied by `stage_optimizer`."""
    grad_fn = jax.value_and_grad(multimodal_loss_sum, has_aux=True)

    def step(state: TrainState, batch, rng):
        train_p = {k: v for k, v in state.params.items() if k in trainable}
        frozen = {k: v for k, v in state.params.items() if k not in trainable}
        (loss_sum, w_sum), grads = grad_fn(train_p, frozen, batch, rng, model, False)
        denom = jnp.maximum(w_sum, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        metrics = {"loss": loss_sum / denom, "grad_norm": optax.global_norm(grads), "target_tokens": w_sum}
        if lr_fn is not None:
            metrics["lr"] = lr_fn(state.step)
        full = {**jax.tree.map(jnp.zeros_like, frozen), **grads}
        return state.apply_gradients(grads=full), metrics

    return step


def make_multimodal_eval_step(model: MultimodalGPT):
    """`(params, batch) -> (text loss sum, text targets)` for the loop's periodic eval_loss."""
    return lambda params, batch: multimodal_loss_sum(params, {}, batch, None, model, True)


def multimodal_init_fn(model: MultimodalGPT, tx, length: int, start: dict[str, tuple[str, Any]]):
    """rng -> TrainState; each part named in `start` takes its values ((source, params)) instead of its init.
    A pretrained decoder's token table grows to config.model.vocab_size (room for the placeholder)."""

    def init_fn(rng):
        init_rng, grow_rng = jax.random.split(rng)
        params = model.init(init_rng, length)
        for part, (source, values) in start.items():
            try:
                params[part] = finetune.merge_pretrained(params[part], values, grow_rng, model.decoder.cfg.init_std)
            except ValueError as e:
                raise config_lib.ConfigError(f"{source}: {e}") from None
        return TrainState.create(apply_fn=model, params=params, tx=tx)

    return init_fn


def load_run_params(workdir: str, key: str, mesh: Mesh) -> Any:
    """The params of the latest checkpoint of another run (config key `key` names it)."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"config.vision.{key}={workdir}: no checkpoints there; train that run first")
    with mesh_lib.activation_rules(mesh):
        return finetune.load_pretrained_params(workdir, mesh)


def multimodal_flops_per_step(model: MultimodalGPT, batch: int, length: int) -> float:
    """6N per decoder token plus the frozen encoder's forward (2N) over every image slot."""
    vit = dataclasses.replace(model.encoder.cfg.block_config(), vocab_size=model.patch_dim)
    images = batch * (length // model.n_patches) * model.n_patches  # every image slot a row could hold
    return flops_lib.flops_per_token(model.decoder.cfg, length) * batch * length + (
        flops_lib.flops_per_token(vit, model.n_patches) / 3 * images
    )


def multimodal_trainer(cfg, model, tok, bank, records, eval_records, trainable, start) -> loop.Trainer:
    t, length = cfg.train, seq_len(cfg)

    def data(recs, train):
        return image_text.multimodal_dataset(
            bank,
            recs,
            tok,
            model.image_token_id,
            seq_len=length,
            batch_size=t.batch_size,
            seed=cfg.data.seed,
            train=train,
            worker_count=cfg.data.worker_count if train else 0,
        )

    return loop.Trainer(
        init_fn=multimodal_init_fn(model, stage_optimizer(t, trainable), length, start),
        train_step=make_multimodal_train_step(model, trainable, lr_schedule(t)),
        train_data=data(records, True),
        eval_step=make_multimodal_eval_step(model),
        eval_data=lambda: data(eval_records, False),
        flops_per_step=multimodal_flops_per_step(model, t.batch_size, length),
        tokens_per_step=t.batch_size * length,
    )


def stage_configs(cfg: ml_collections.ConfigDict) -> list[tuple[str, tuple[str, ...], ml_collections.ConfigDict]]:
    """(name, trainable parts, config) of each stage to run: stage 1 at the projector's steps and learning rate."""
    v, out = cfg.vision, []
    for name, trainable in STAGES:
        c = ml_collections.ConfigDict(cfg.to_dict())
        if name == "stage1_projector":
            if v.projector_steps == 0:
                continue
            c.train.update(
                steps=v.projector_steps, lr=v.projector_lr, warmup_steps=min(cfg.train.warmup_steps, v.projector_steps)
            )
        elif not v.train_decoder:
            trainable = ("projector",)
        out.append((name, trainable, c))
    return out


def pretrained_parts(cfg: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, tuple[str, Any]]:
    """{part: (config key, params)} of the parts that start from other runs: the clip run's image tower and the
    `train` run's GPT."""
    v, start = cfg.vision, {}
    if v.encoder_init:
        clip_params = load_run_params(v.encoder_init, "encoder_init", mesh)
        start["encoder"] = ("config.vision.encoder_init", clip_params["image_tower"])
    else:
        logging.warning("config.vision.encoder_init is empty: the frozen image encoder keeps its random init")
    if v.decoder_init:
        start["decoder"] = ("config.vision.decoder_init", load_run_params(v.decoder_init, "decoder_init", mesh))
    return start


def train_stages(cfg, workdir: str, mesh: Mesh, model: MultimodalGPT, tok, bank, train_idx, test_idx):
    """Runs (or resumes) LLaVA's stages in WORKDIR/<stage>; returns (final state, {stage: final losses})."""
    v = cfg.vision
    records = image_text.digit_records(
        train_idx,
        len(bank.photos),
        seed=cfg.data.seed,
        max_interleaved=v.max_interleaved,
        photo_repeats=v.photo_repeats,
    )
    eval_records = image_text.digit_records(
        test_idx, 0, seed=cfg.data.seed, max_interleaved=v.max_interleaved, photo_repeats=0
    )
    start, state, losses = pretrained_parts(cfg, mesh), None, {}
    for name, trainable, stage_cfg in stage_configs(cfg):
        if state is not None:  # each stage starts where the previous one ended
            start = {part: (f"{name} start", state.params[part]) for part in state.params}
        trainer = multimodal_trainer(stage_cfg, model, tok, bank, records, eval_records, trainable, start)
        logging.info("%s: training %s for %d steps", name, "+".join(trainable), stage_cfg.train.steps)
        state = loop.train(trainer, stage_cfg, os.path.join(workdir, name), mesh).state
        last = {k: val for row in logs.read_metrics(os.path.join(workdir, name)) for k, val in row.items()}
        losses[name] = {"final_train_loss": last.get("loss"), "final_eval_loss": last.get("eval_loss")}
    return state, losses


def run_multimodal(cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh) -> dict[str, Any]:
    """Trains (or resumes) both stages, then answers and captions the held-out digits by decoding."""
    tok = resolve_tokenizer(cfg, workdir)
    model = make_multimodal(cfg, image_token_id(tok))
    bank, train_idx, test_idx = load_images(cfg)
    state, losses = train_stages(cfg, workdir, mesh, model, tok, bank, train_idx, test_idx)
    if cfg.vision.eval_limit:
        test_idx = test_idx[: cfg.vision.eval_limit]
    evals = evaluate_multimodal(model, state.params, tok, bank, train_idx, test_idx, cfg, mesh)
    print(
        f"held-out digits ({len(test_idx)}): zero-shot answer accuracy {evals['zero_shot']['accuracy']:.3f}, "
        f"{cfg.vision.few_shot}-shot {evals['few_shot']['accuracy']:.3f}, captions naming the digit "
        f"{evals['captions']['accuracy']:.3f} (chance 0.100)"
    )
    return {"task": "multimodal", "image_token_id": model.image_token_id, "stages": losses, **evals}


# ------------------------------------------------------------------------------------------------------------
# The command


def run(cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None = None) -> dict[str, Any]:
    """`gptx.main train` for a vision config: trains, evaluates, writes WORKDIR/vision_results.json."""
    validate_vision(cfg)
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    os.makedirs(workdir, exist_ok=True)
    out = run_clip(cfg, workdir, mesh) if cfg.vision.task == "clip" else run_multimodal(cfg, workdir, mesh)
    logs.write_json(os.path.join(workdir, RESULTS), out)
    return out
