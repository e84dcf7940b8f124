"""The demo's `pretrain` stage: a tiny GPT-2 pretrained on the bundled corpus, its losses plotted against the
unigram entropy (the best a model without context can do)."""

from __future__ import annotations

import os
import time

import ml_collections
import numpy as np

from gptx.data import loader, sources, stats
from gptx.demo import report as report_lib
from gptx.demo import tokenizer
from gptx.train import logs
from gptx.train import pretrain as pretrain_lib


def summarize(history: list[dict], steps: int, unigram: float, seconds: float) -> dict:
    """The run's final losses, the unigram baseline and the median throughput (WORKDIR/pretrain/summary.json)."""
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    speed = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    return {
        "steps": steps,
        "final_train_loss": [h["loss"] for h in history if "loss" in h][-1],
        "final_eval_loss": evals[-1] if evals else None,
        "unigram_entropy": unigram,
        "median_tokens_per_s": float(np.median(speed)) if speed else None,
        "wall_s": seconds,
    }


def stage(cfg: ml_collections.ConfigDict, workdir: str, report: report_lib.Report) -> None:
    """Pretrain a tiny GPT-2 on the corpus; plot its losses against the unigram entropy."""
    t0 = time.perf_counter()
    run_dir = os.path.join(workdir, "pretrain")
    cfg = tokenizer.demo_config(cfg, workdir, train=True)
    pretrain_lib.run(cfg, run_dir)
    history = logs.read_metrics(run_dir)  # the whole run, also when it resumed
    tok = pretrain_lib.load_tokenizer(cfg, workdir)
    docs = sources.read_documents(cfg.data.corpus, cfg.data.doc_separator)
    train_docs, _ = loader.split_train_val(docs, cfg.data.val_fraction)
    unigram = stats.unigram_entropy(train_docs, tok)
    title = f"{cfg.model.name}: {cfg.model.n_layer} layers, d={cfg.model.d_model}"
    report_lib.plot_losses(history, unigram, report.image_path("pretrain_loss.png"), title)
    summary = summarize(history, cfg.train.steps, unigram, time.perf_counter() - t0)
    logs.write_json(os.path.join(run_dir, "summary.json"), summary)
    report.section(
        "pretrain",
        f"## 2. Pretraining (GPT-2 architecture)\n\n"
        f"{cfg.model.n_layer} layers, d_model {cfg.model.d_model}, {cfg.model.n_head} heads, context "
        f"{cfg.model.block_size}, {cfg.train.steps} steps of {cfg.train.batch_size} packed sequences.\n\n"
        f"| | nats/token |\n|---|---|\n| unigram entropy (context-free baseline) | {unigram:.3f} |\n"
        f"| final train loss | {summary['final_train_loss']:.3f} |\n"
        f"| final validation loss | {summary['final_eval_loss']:.3f} |\n\n"
        f"Median throughput {summary['median_tokens_per_s'] or 0:,.0f} tokens/s; stage took "
        f"{summary['wall_s']:.0f} s.\n\n![loss curve](report/pretrain_loss.png)\n",
    )
