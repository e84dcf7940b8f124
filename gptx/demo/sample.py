"""The demo's `sample` stage: the pretrained model continues a few prompts, all in one batch through the
KV-cache decoder; the samples are printed and written to the report."""

from __future__ import annotations

import os

import ml_collections

from gptx import sample as sample_lib
from gptx.demo import tokenizer
from gptx.demo.report import Report
from gptx.train import pretrain

SAMPLE_PROMPTS = ("ROMEO:", "JULIET:\nO Romeo,", "KING HENRY VI:\n", "First Citizen:\nWe")


def stage(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """Print samples from the pretrained model: all prompts in one batch through the KV-cache decoder."""
    cfg = tokenizer.demo_config(cfg, workdir)
    model, params, tok = pretrain.load_trained(cfg, os.path.join(workdir, "pretrain"))
    prompts = [tok.prompt(p) for p in SAMPLE_PROMPTS]
    cfg.sample.max_new_tokens = min(cfg.sample.max_new_tokens, cfg.model.block_size - max(map(len, prompts)))
    sampling = sample_lib.sampling_from_config(cfg.sample, tok.eos_id, tok.pad_id)
    out = sample_lib.generate(model, params, prompts, sampling, tokenizer=tok)
    texts = [p + t for p, t in zip(SAMPLE_PROMPTS, out.texts, strict=True)]
    for text in texts:
        print(f"---\n{text}")
    body = "\n\n".join(f"```\n{t}\n```" for t in texts)
    settings = f"temperature {sampling.temperature}, top-k {sampling.top_k}, top-p {sampling.top_p}"
    report.section("sample", f"## 3. Samples ({settings}, stop at a blank line)\n\n{body}\n")
