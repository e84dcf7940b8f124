"""The demo's `paradigms` stage: one pretrained model used three ways on SST-2 (GPT-1 Sec. 4-5, GPT-3 Sec. 1).

  1. fine-tuned from the pretrained checkpoint (GPT-1: pretrain, then supervised fine-tuning of every weight);
  2. the same fine-tuning from random init (the paper's "no pre-training" ablation, Table 5);
  3. prompted, no gradient step (GPT-3): K demonstrations from sst2/train.tsv, then the test sentence, scored by
     the evaluation harness (gptx/eval) as a choice between " negative" and " positive".

Both fine-tuning arms share the tokenizer, training examples, batch order, step count, learning rate and seed;
only the GPT body's initial weights differ. All three are scored on the same SST-2 dev sentences. The budget is
a short one (module constants below) so the stage fits in a few CPU minutes; tests/benchmarks/finetune_sst2.py
runs the longer, multi-seed comparison.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import ml_collections

from gptx import mesh as mesh_lib
from gptx.demo import report as report_lib
from gptx.demo import tokenizer
from gptx.eval import harness, taskfile
from gptx.eval.requests import LM
from gptx.train import finetune, logs, pretrain

# The short budget: FT_STEPS steps of FT_BATCH over the 1000-sentence sst2/train.tsv, lr FT_LR with 10% warmup.
FT_STEPS = 60
FT_BATCH = 32
FT_LR = 3e-4
FT_WARMUP = 0.1
DEV_LIMIT = 0  # dev sentences scored by all three; 0 = all 872
SHOTS = 4  # demonstrations in the prompted arm (dropped from the front when they do not fit the context)
RESULTS = "paradigms.json"


def finetune_config(cfg: ml_collections.ConfigDict, tokenizer_path: str, vocab: int, init_from: str):
    """The fine-tuning config of one arm: the demo's model section, the short budget, GPT-1's classifier."""
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.model.vocab_size = vocab + 3  # start, delim, extract after the tokenizer's pieces
    c.data.update(tokenizer=tokenizer_path, seq_len=0)
    c.train.update(
        steps=FT_STEPS,
        batch_size=FT_BATCH,
        lr=FT_LR,
        grad_accum=1,
        eval_every=10**9,
        ckpt_every=10**9,
        async_ckpt=False,
        progress=False,
    )
    c.finetune.update(
        tasks="sst2",
        init_from=init_from,
        epochs=0.0,  # run train.steps steps
        aux_lm_coef=0.0,
        warmup_fraction=FT_WARMUP,
        train_limit=0,
        eval_limit=DEV_LIMIT,
    )
    return c


def fine_tune_arms(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, Any]]:
    """{"pretrained" | "random": finetune result of the task sst2} for the demo's WORKDIR/pretrain model."""
    tokenizer_path = pretrain.tokenizer_path(cfg, workdir)
    vocab = pretrain.load_tokenizer(cfg, workdir).vocab_size
    out = {}
    for arm, init_from in (("pretrained", os.path.join(workdir, "pretrain")), ("random", "")):
        run_dir = os.path.join(workdir, "paradigms", f"finetune_{arm}")
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time: never resume the other budget
        t0 = time.perf_counter()
        res = finetune.run(finetune_config(cfg, tokenizer_path, vocab, init_from), run_dir)
        out[arm] = {**res["tasks"]["sst2"], "steps": res["steps"], "wall_s": time.perf_counter() - t0}
    return out


def prompted(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The harness's SST-2 result of the pretrained model with SHOTS demonstrations (acc, acc_stderr, n, ...)."""
    c = tokenizer.demo_config(cfg, workdir)
    t0 = time.perf_counter()
    model, params, tok = pretrain.load_trained(c, os.path.join(workdir, "pretrain"))
    lm = LM(model, params, tok, batch_size=max(cfg.eval.batch_size, 32), mesh=mesh_lib.make_mesh(cfg.mesh))
    data = harness.load_task(taskfile.get("sst2"), cfg.eval.data_dir, DEV_LIMIT)
    res = harness.evaluate_task(lm, data, (SHOTS,), seed=cfg.eval.seed)[SHOTS]
    return {**res, "wall_s": time.perf_counter() - t0}


def stderr(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy over n examples."""
    return (acc * (1 - acc) / max(n, 1)) ** 0.5


def section(rows: list[tuple[str, float, int]], seconds: float) -> str:
    """The report section: one (paradigm, dev accuracy, dev sentences) row per arm, and what the papers found."""
    table = "\n".join(f"| {name} | {acc:.3f} ± {stderr(acc, n):.3f} | {n} |" for name, acc, n in rows)
    return (
        "## Three paradigms on SST-2 (GPT-1, GPT-3)\n\n"
        f"The pretrained model used three ways on SST-2 sentiment (dev set, chance 50%): fine-tuned for {FT_STEPS} "
        f"steps of {FT_BATCH} sentences of `sst2/train.tsv` (lr {FT_LR:g}, GPT-1's linear head on the extract "
        "token), the same fine-tuning from random init (same tokenizer, examples, order, steps and seed), and "
        f"prompted with up to {SHOTS} demonstrations (those that fit the context) and no gradient step (the "
        "evaluation harness, `negative`/`positive` "
        "scored by log-likelihood).\n\n"
        "| paradigm | dev accuracy ± stderr | dev sentences |\n|---|---|---|\n"
        f"{table}\n\n"
        f"Here pre-training changes fine-tuned accuracy by {100 * (rows[0][1] - rows[1][1]):+.1f} points (one seed; "
        "the binomial stderr above is the noise of the dev set alone). In GPT-1 (Table 5) removing pre-training "
        "costs 14.8 points on average over its tasks; GPT-3 (Fig. 1.2) finds in-context learning growing with "
        "model size, so a model of this size is expected near chance when prompted. "
        "`tests/benchmarks/finetune_sst2.py` measures the fine-tuning gap over several seeds with a model "
        "pretrained on modern English and unlabelled SST-2 training text (configs/english.py:reviews, 8192 "
        "pieces), where pre-training wins on every seed. "
        f"Stage took {seconds:.0f} s.\n\n"
        "![three paradigms](report/paradigms.png)\n"
    )


def stage(cfg: ml_collections.ConfigDict, workdir: str, report: report_lib.Report) -> None:
    """GPT-1 vs GPT-3 on SST-2: fine-tuned from pretrained, from random init, and prompted. Runs the three arms on
    the demo's pretrained model (WORKDIR/pretrain, WORKDIR/tokenizer.model); writes WORKDIR/paradigms.json, the
    bar chart and the report section."""
    if not os.path.isdir(os.path.join(workdir, "pretrain", "checkpoints")):
        raise FileNotFoundError(f"no pretrained model in {workdir}/pretrain: run the demo's pretrain stage first")
    t0 = time.perf_counter()
    tuned = fine_tune_arms(cfg, workdir)
    shot = prompted(cfg, workdir)
    rows = [
        ("fine-tuned from pretrained", tuned["pretrained"]["accuracy"], tuned["pretrained"]["examples"]),
        ("fine-tuned from random init", tuned["random"]["accuracy"], tuned["random"]["examples"]),
        (f"prompted ({shot['mean_shots']:.1f} demonstrations fit)", shot["acc"], shot["n"]),
    ]
    logs.write_json(os.path.join(workdir, RESULTS), {"finetune": tuned, "prompted": shot, "shots": SHOTS})
    report_lib.plot_accuracy_bars(
        [(r[0].replace(" from ", "\nfrom ").replace(" (", "\n("), r[1], stderr(r[1], r[2])) for r in rows],
        report.image_path("paradigms.png"),
        f"{cfg.model.name}: three ways to use one pretrained model",
    )
    report.section("paradigms", section(rows, time.perf_counter() - t0))
