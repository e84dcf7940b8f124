"""The demo's `vision` stage: GPT-4V in miniature on the shared digits and photos (`--stages=vision`).

1. CLIP: a ViT and a small GPT text tower aligned on digit images and captions made from their labels
   (configs/vision.py:clip); zero-shot classification of held-out digits by prompted class names.
2. The multimodal decoder (configs/vision.py:multimodal): the CLIP image tower (frozen) feeds, through an MLP
   projector, the demo's own GPT (WORKDIR/pretrain when the pretrain stage ran: LLaVA's pretrained language
   model; otherwise a fresh one). Stage 1 trains the projector, stage 2 the projector and the decoder. Held-out
   digits are then answered zero-shot, with interleaved few-shot examples, and captioned, by greedy decoding.

The stage shares the demo's tokenizer (WORKDIR/tokenizer.model) and writes WORKDIR/vision/{clip,multimodal}
plus a report section with a figure of held-out digits and the models' answers.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

import ml_collections

from gptx.data import image_text
from gptx.data.paths import REPO
from gptx.demo import report as report_lib
from gptx.train import pretrain
from gptx.train import vision as vision_train

LOSS_RUNS = {
    "CLIP": "clip",
    "stage 1: projector": "multimodal/stage1_projector",
    "stage 2: + decoder": "multimodal/stage2_full",
}


def vision_config(arg: str) -> ml_collections.ConfigDict:
    """configs/vision.py:ARG of the repository this package runs from."""
    path = os.path.join(REPO, "configs", "vision.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: the vision stage reads the repository's configs/vision.py")
    spec = importlib.util.spec_from_file_location("configs_vision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def stage_configs(cfg: ml_collections.ConfigDict, workdir: str) -> tuple[ml_collections.ConfigDict, ...]:
    """(clip config, multimodal config) sharing the demo's tokenizer, mesh and (for the decoder) model."""
    tokenizer = pretrain.tokenizer_path(cfg, workdir)
    clip_cfg, mm_cfg = vision_config("clip"), vision_config("multimodal")
    for c in (clip_cfg, mm_cfg):
        c.data.tokenizer = tokenizer
        c.mesh = ml_collections.ConfigDict(cfg.mesh.to_dict())
        c.vision.data_dir = cfg.vision.data_dir
        c.train.progress = cfg.train.progress
    clip_cfg.model.vocab_size = cfg.tokenizer.vocab_size
    mm_cfg.model = ml_collections.ConfigDict(cfg.model.to_dict())
    mm_cfg.model.vocab_size = cfg.tokenizer.vocab_size + 8  # the image placeholder, rounded up to a multiple of 8
    mm_cfg.data.seq_len = min(mm_cfg.data.seq_len, cfg.model.block_size)
    mm_cfg.vision.encoder_init = os.path.join(workdir, "vision", "clip")
    pretrained = os.path.join(workdir, "pretrain")
    mm_cfg.vision.decoder_init = pretrained if os.path.isdir(os.path.join(pretrained, "checkpoints")) else ""
    return clip_cfg, mm_cfg


def _section(clip_out: dict[str, Any], mm_out: dict[str, Any], mm_cfg, seconds: float) -> str:
    zs, seen = clip_out["zero_shot"], clip_out["zero_shot_training_templates"]
    decoder = mm_cfg.vision.decoder_init or "a fresh GPT (run the pretrain stage first for LLaVA's setting)"
    stages = " → ".join(f"{k}: loss {v['final_train_loss']:.3f}" for k, v in mm_out["stages"].items())
    samples = "\n".join(
        f"| {image_text.DIGIT_NAMES[bank_label]} | {q!r} | {f!r} | {c!r} |"
        for bank_label, q, f, c in zip(
            mm_out["labels"][:6],
            mm_out["zero_shot"]["samples"][:6],
            mm_out["few_shot"]["samples"][:6],
            mm_out["captions"]["samples"][:6],
            strict=True,
        )
    )
    photos = "\n".join(
        f"| {p['file']} | {p['caption']} | {p['generated']!r} |" for p in mm_out.get("photo_captions", [])
    )
    return (
        "## Vision (GPT-4V in miniature)\n\n"
        f"Digits (8x8, upscaled to {mm_cfg.vision.image_size}x{mm_cfg.vision.image_size}) with captions made from "
        f"their labels, and {len(mm_out.get('photo_captions', []))} captioned photos; "
        f"{zs['examples']} digits are held out. Stage took {seconds:.0f} s.\n\n"
        f"**Contrastive alignment** ({clip_out['loss_kind']} loss, {clip_out['steps']} steps, learned logit scale "
        f"{clip_out['logit_scale']:.1f}): zero-shot accuracy on held-out digits **{zs['accuracy']:.3f}** with prompt "
        f"templates never seen in training ({seen['accuracy']:.3f} with the training captions' templates); chance "
        f"is 0.100.\n\n"
        f"**Multimodal decoder** (frozen CLIP image tower → MLP projector → the decoder, {decoder}; {stages}):\n\n"
        "| held-out digits | answer accuracy |\n|---|---|\n"
        f"| zero-shot question (`<image> {image_text.QUESTION}`) | {mm_out['zero_shot']['accuracy']:.3f} |\n"
        f"| {mm_cfg.vision.few_shot}-shot, interleaved (`<image> two. <image> five. ... <image>`) | "
        f"{mm_out['few_shot']['accuracy']:.3f} |\n"
        f"| caption (`<image>` alone) names the digit | {mm_out['captions']['accuracy']:.3f} |\n\n"
        "The prompt formats are the training records' (captions, the question and interleaved lists, all made from "
        "labels); the images are held out. Answers are decoded greedily by `gptx.sample.decode` with the images in "
        "the prompt.\n\n"
        "| digit | zero-shot answer | few-shot answer | caption |\n|---|---|---|---|\n" + samples + "\n\n"
        "| photo | caption | generated caption |\n|---|---|---|\n" + photos + "\n\n"
        "![held-out digits](report/vision_digits.png)\n\n![vision losses](report/vision_losses.png)\n"
    )


def plot(clip_out: dict[str, Any], mm_out: dict[str, Any], bank, workdir: str, report: report_lib.Report) -> None:
    """The held-out digits with CLIP's class and the decoder's answer, and the loss curves of the three runs."""
    clip_pred = dict(zip(clip_out["test_digits"], clip_out["predictions"], strict=True))
    shown = [i for i in mm_out["test_digits"] if i in clip_pred]
    answers = dict(zip(mm_out["test_digits"], mm_out["zero_shot"]["answers"], strict=True))
    png = report.image_path("vision_digits.png")
    report_lib.plot_digits(bank, shown, [clip_pred[i] for i in shown], [answers[i] for i in shown], png)
    runs = {k: os.path.join(workdir, "vision", v) for k, v in LOSS_RUNS.items()}
    report_lib.plot_curves({k: v for k, v in runs.items() if os.path.isdir(v)}, report.image_path("vision_losses.png"))


def stage(cfg: ml_collections.ConfigDict, workdir: str, report: report_lib.Report) -> None:
    """GPT-4V in miniature: CLIP on digits, then a ViT-fed decoder answering about them; writes the report section."""
    t0 = time.perf_counter()
    if not os.path.exists(pretrain.tokenizer_path(cfg, workdir)):
        pretrain.train_tokenizer(cfg, workdir)
    clip_cfg, mm_cfg = stage_configs(cfg, workdir)
    clip_out = vision_train.run(clip_cfg, os.path.join(workdir, "vision", "clip"))
    mm_out = vision_train.run(mm_cfg, os.path.join(workdir, "vision", "multimodal"))
    bank, _, _ = vision_train.load_images(mm_cfg)
    mm_out["labels"] = [int(bank.labels[i]) for i in mm_out["test_digits"]]
    plot(clip_out, mm_out, bank, workdir, report)
    report.section("vision", _section(clip_out, mm_out, mm_cfg, time.perf_counter() - t0))
