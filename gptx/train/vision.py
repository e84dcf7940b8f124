"""GPT-4V-style vision training through the one loop: `train` with a config whose `vision.task` is set.

  clip        a ViT and a GPT text tower (config.model) aligned contrastively on image-caption pairs, then
              zero-shot classification of the held-out digits (gptx/train/clip.py).
  multimodal  the ViT's patch features, through an MLP projector, in a GPT decoder's token stream, trained in
              LLaVA's two stages, then held-out digits answered and captioned by decoding
              (gptx/train/multimodal.py).

This module holds what both share: the vision config's rules, the image bank and its digit split, the tokenizer
(config.data.tokenizer, else the decoder's or encoder's run's, else WORKDIR's) and the command. Each stage is a
step function plugged into gptx/train/loop.py, so every run resumes from its checkpoints. Results go to
WORKDIR/vision_results.json.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx.data import image_text, paths
from gptx.models import clip as clip_lib
from gptx.models.vision import ViTConfig
from gptx.train import clip, logs, multimodal, pretrain

TASKS = ("clip", "multimodal")
RESULTS = "vision_results.json"


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
    length = config_lib.seq_len(cfg)
    if v.task == "multimodal" and images * (n_patches + 6) + 8 > length:
        raise config_lib.ConfigError(
            f"config.data.seq_len={length} is too short for {images} images of {n_patches} tokens with their "
            "text (config.vision.max_interleaved, few_shot + 1); lower them or raise the sequence length"
        )


def sources(cfg: ml_collections.ConfigDict) -> list[str]:
    return [s.strip() for s in cfg.vision.sources.split(",") if s.strip()]


def data_dir(cfg: ml_collections.ConfigDict) -> str:
    """config.vision.data_dir, a relative path taken from the repository root."""
    return paths.from_repo(cfg.vision.data_dir)


def load_images(cfg: ml_collections.ConfigDict) -> tuple[image_text.ImageBank, np.ndarray, np.ndarray]:
    """(image bank, train digit indices, held-out digit indices)."""
    v = cfg.vision
    bank = image_text.load_bank(data_dir(cfg), sources(cfg), v.image_size, v.patch_size, v.channels)
    bank.max_rotation, bank.max_shift = v.max_rotation, v.max_shift
    train_idx, test_idx = image_text.split_digits(len(bank.labels), v.test_fraction, cfg.data.seed)
    return bank, train_idx, test_idx


def run(cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None = None) -> dict[str, Any]:
    """`gptx.main train` for a vision config: trains, evaluates, writes WORKDIR/vision_results.json."""
    validate_vision(cfg)
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    os.makedirs(workdir, exist_ok=True)
    tok = pretrain.resolve_tokenizer(cfg, workdir, (cfg.vision.decoder_init, cfg.vision.encoder_init))
    task = clip if cfg.vision.task == "clip" else multimodal
    out = task.run(cfg, workdir, mesh, tok, load_images(cfg))
    logs.write_json(os.path.join(workdir, RESULTS), out)
    return out
