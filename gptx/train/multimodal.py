"""The GPT-4V-style multimodal decoder trained in LLaVA's two stages (Liu et al., 2023) through the one loop.

The ViT's patch features, through an MLP projector, enter a GPT decoder's (config.model) token stream at image
placeholders (gptx/models/multimodal.py). Stage 1 trains only the projector (`vision.projector_steps` steps at
`vision.projector_lr`, WORKDIR/stage1_projector), stage 2 the projector and the decoder (`train.steps`,
WORKDIR/stage2_full; the projector only when `vision.train_decoder` is False). The image encoder is always
frozen; it comes from a clip run (`vision.encoder_init`) and the decoder from a `train` run
(`vision.decoder_init`). Afterwards, held-out digits are answered and captioned by decoding through gptx.sample,
zero-shot and with interleaved few-shot examples.

The loss is next-token cross-entropy over text targets only (placeholder targets carry none), averaged over the
whole batch's text targets, so `config.train.grad_accum` micro-batches give the whole batch's gradient.
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
from flax import linen as nn
from jax.sharding import Mesh

from gptx import config as config_lib
from gptx import flops as flops_lib
from gptx import mesh as mesh_lib
from gptx.data import image_text
from gptx.data import tokenizer as tokenizer_lib
from gptx.models import vocab_tiling
from gptx.models.gpt import GPT, GPTConfig
from gptx.models.multimodal import PARTS, MultimodalGPT, Projector, text_target_weights
from gptx.models.vision import ViT, ViTConfig
from gptx.train import checkpoints, logs, loop
from gptx.train import step as step_lib
from gptx.train.state import TrainState, lr_schedule, make_optimizer
from gptx.train.vision_eval import evaluate_multimodal

STAGES = (("stage1_projector", ("projector",)), ("stage2_full", ("projector", "decoder")))
Images = tuple[image_text.ImageBank, np.ndarray, np.ndarray]  # (bank, train digit indices, held-out digit indices)


@dataclasses.dataclass(frozen=True)
class StageData:
    """What every stage trains and evaluates on: the tokenizer, the image bank and the text-image records."""

    tok: tokenizer_lib.Tokenizer
    bank: image_text.ImageBank
    records: list
    eval_records: list


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


def loss_sum(params: Any, batch: step_lib.Batch, rng: jax.Array | None, model: MultimodalGPT):
    """(summed next-token cross-entropy over text targets, summed weights); placeholder targets carry none.

    batch: `inputs`, `targets`, `positions`, `segment_ids` [B, T] int32, `weights` [B, T] float32 and token-aligned
    `patches` [B, T, P]. rng None: dropout off.
    """
    hidden = model(
        params,
        batch["inputs"],
        batch["patches"],
        batch["positions"],
        batch["segment_ids"],
        deterministic=rng is None,
        rng=rng,
        return_hidden=True,
    )  # [B, T, D]
    wte = nn.meta.unbox(params["decoder"]["wte"])
    logp, _ = vocab_tiling.token_logprobs(hidden, wte, batch["targets"], chunk=model.decoder.cfg.logits_chunk)
    w = text_target_weights(batch["targets"], batch["weights"], model.image_token_id)
    return -jnp.sum(logp * w), jnp.sum(w)


def loss(model: MultimodalGPT) -> step_lib.Loss:
    """Mean cross-entropy over the text targets of the whole batch (norms `tokens`), however it is split.

    Metrics: `target_tokens`, the summed text-target weights.
    """

    def fn(params, batch, rng, norms):
        total, w = loss_sum(params, batch, rng, model)
        return total / jnp.maximum(norms["tokens"], 1.0), {"target_tokens": w}

    def norms(batch):
        return {"tokens": jnp.sum(text_target_weights(batch["targets"], batch["weights"], model.image_token_id))}

    return step_lib.Loss(fn=fn, norms=norms, denominator="tokens")


def init_fn_of(model: MultimodalGPT, tx, length: int, start: dict[str, tuple[str, Any]]):
    """rng -> TrainState; each part named in `start` takes its values ((source, params)) instead of its init.
    A pretrained decoder's token table grows to config.model.vocab_size (room for the placeholder)."""

    def init_fn(rng):
        init_rng, grow_rng = jax.random.split(rng)
        params = model.init(init_rng, length)
        for part, (source, values) in start.items():
            try:
                params[part] = checkpoints.merge_params(params[part], values, grow_rng, model.decoder.cfg.init_std)
            except ValueError as e:
                raise config_lib.ConfigError(f"{source}: {e}") from None
        return TrainState.create(apply_fn=model, params=params, tx=tx)

    return init_fn


def restore_part(run_dir: str, key: str, mesh: Mesh, target: Any) -> Any:
    """The params of the latest checkpoint of another run (config.vision.`key` names it), each one restored in
    the sharding of its `target` (abstract annotated params) when the shapes agree, replicated otherwise."""
    try:
        with mesh_lib.activation_rules(mesh):
            params, _ = checkpoints.restore_params(run_dir, mesh, target, strict=False)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config.vision.{key}={run_dir}: {e}") from None
    return params


def pretrained_parts(cfg: ml_collections.ConfigDict, mesh: Mesh, model: MultimodalGPT) -> dict[str, tuple[str, Any]]:
    """{part: (config key, params)} of the parts that start from other runs: the clip run's image tower and the
    `train` run's GPT."""
    v, start = cfg.vision, {}
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), config_lib.seq_len(cfg)))
    if v.encoder_init:
        clip_params = restore_part(v.encoder_init, "encoder_init", mesh, {"image_tower": target["encoder"]})
        if "image_tower" not in clip_params:
            raise config_lib.ConfigError(
                f"config.vision.encoder_init={v.encoder_init}: not a clip run (no image_tower)"
            )
        start["encoder"] = ("config.vision.encoder_init", clip_params["image_tower"])
    else:
        logging.warning("config.vision.encoder_init is empty: the frozen image encoder keeps its random init")
    if v.decoder_init:
        decoder = restore_part(v.decoder_init, "decoder_init", mesh, target["decoder"])
        start["decoder"] = ("config.vision.decoder_init", decoder)
    return start


def flops_per_step(model: MultimodalGPT, batch: int, length: int) -> float:
    """6N per decoder token plus the frozen encoder's forward (2N) over every image slot."""
    vit = dataclasses.replace(model.encoder.cfg.block_config(), vocab_size=model.patch_dim)
    images = batch * (length // model.n_patches) * model.n_patches  # every image slot a row could hold
    return flops_lib.flops_per_token(model.decoder.cfg, length) * batch * length + (
        flops_lib.flops_per_token(vit, model.n_patches) / 3 * images
    )


def make_trainer(cfg, model: MultimodalGPT, data: StageData, trainable: tuple[str, ...], start) -> loop.Trainer:
    """The Trainer of one stage: `trainable` parts trained (the others frozen), from `start`'s values."""
    t, length = cfg.train, config_lib.seq_len(cfg)

    def dataset(recs, train):
        return image_text.multimodal_dataset(
            data.bank,
            recs,
            data.tok,
            model.image_token_id,
            seq_len=length,
            batch_size=t.batch_size,
            seed=cfg.data.seed,
            train=train,
            worker_count=cfg.data.worker_count if train else 0,
        )

    train_step = step_lib.make_train_step(
        loss(model), grad_accum=t.grad_accum, lr_fn=lr_schedule(t), trainable=trainable
    )
    return loop.Trainer(
        init_fn=init_fn_of(model, stage_optimizer(t, trainable), length, start),
        train_step=train_step,
        train_data=dataset(data.records, True),
        eval_step=step_lib.make_eval_step(loss(model), "tokens"),
        eval_data=lambda: dataset(data.eval_records, False),
        flops_per_step=flops_per_step(model, t.batch_size, length),
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


def stage_data(cfg: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer, images: Images) -> StageData:
    """Training records of the training digits (and photos), eval records of the held-out digits."""
    bank, train_idx, test_idx = images
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
    return StageData(tok, bank, records, eval_records)


def train_stages(cfg, workdir: str, mesh: Mesh, model: MultimodalGPT, data: StageData):
    """Runs (or resumes) LLaVA's stages in WORKDIR/<stage>; returns (final state, {stage: final losses})."""
    start, state, losses = pretrained_parts(cfg, mesh, model), None, {}
    for name, trainable, stage_cfg in stage_configs(cfg):
        if state is not None:  # each stage starts where the previous one ended
            start = {part: (f"{name} start", state.params[part]) for part in state.params}
        trainer = make_trainer(stage_cfg, model, data, trainable, start)
        logging.info("%s: training %s for %d steps", name, "+".join(trainable), stage_cfg.train.steps)
        state = loop.train(trainer, stage_cfg, os.path.join(workdir, name), mesh).state
        last = {k: val for row in logs.read_metrics(os.path.join(workdir, name)) for k, val in row.items()}
        losses[name] = {"final_train_loss": last.get("loss"), "final_eval_loss": last.get("eval_loss")}
    return state, losses


def run(
    cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh, tok: tokenizer_lib.Tokenizer, images: Images
) -> dict[str, Any]:
    """Trains (or resumes) both stages, then answers and captions the held-out digits by decoding."""
    model = make_multimodal(cfg, image_token_id(tok))
    bank, train_idx, test_idx = images
    state, losses = train_stages(cfg, workdir, mesh, model, stage_data(cfg, tok, images))
    if cfg.vision.eval_limit:
        test_idx = test_idx[: cfg.vision.eval_limit]
    evals = evaluate_multimodal(model, state.params, tok, bank, train_idx, test_idx, cfg, mesh)
    print(
        f"held-out digits ({len(test_idx)}): zero-shot answer accuracy {evals['zero_shot']['accuracy']:.3f}, "
        f"{cfg.vision.few_shot}-shot {evals['few_shot']['accuracy']:.3f}, captions naming the digit "
        f"{evals['captions']['accuracy']:.3f} (chance 0.100)"
    )
    return {"task": "multimodal", "image_token_id": model.image_token_id, "stages": losses, **evals}
