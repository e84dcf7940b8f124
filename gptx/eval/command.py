"""`python -m gptx.main eval --config=configs/eval.py --workdir=CHECKPOINT_WORKDIR`.

Evaluates the latest checkpoint of a workdir on config.eval.tasks at each of config.eval.shots, prints a
table and writes JSON (per task, per shot count: metrics, standard errors, n) to config.eval.output, by
default WORKDIR/eval_results.json.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from gptx import mesh as mesh_lib
from gptx.config import ConfigError
from gptx.data import tokenizer as tokenizer_lib
from gptx.eval import harness
from gptx.eval import metrics as M
from gptx.eval import tasks as T
from gptx.eval.requests import CONTEXT_PREFIXES, LM
from gptx.train import logs, pretrain

RESULTS = "eval_results.json"


def parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"config.eval.shots={text!r} must be comma-separated integers, e.g. 0,1,8") from None
    if not shots or min(shots) < 0:
        raise ConfigError(f"config.eval.shots={text!r} must list shot counts >= 0")
    return sorted(dict.fromkeys(shots))


def task_names(cfg: ml_collections.ConfigDict) -> list[str]:
    names = [t.strip() for t in cfg.eval.tasks.split(",") if t.strip()]
    unknown = [n for n in names if n not in T.TASKS]
    if not names or unknown:
        raise ConfigError(f"config.eval.tasks: unknown task(s) {unknown}; tasks: {', '.join(sorted(T.TASKS))}")
    return names


def validate_eval(cfg: ml_collections.ConfigDict) -> None:
    """ConfigError for config.eval values that cannot run."""
    e = cfg.eval
    task_names(cfg)
    parse_shots(e.shots)
    for key in ("batch_size",):
        if e[key] <= 0:
            raise ConfigError(f"config.eval.{key}={e[key]} must be positive")
    for key in ("limit", "max_new_tokens", "rolling_stride", "examples"):
        if e[key] < 0:
            raise ConfigError(f"config.eval.{key}={e[key]} must be >= 0")
    if e.rolling_stride > cfg.model.block_size:
        raise ConfigError(f"config.eval.rolling_stride={e.rolling_stride} exceeds the context {cfg.model.block_size}")
    if e.context_prefix not in CONTEXT_PREFIXES:
        raise ConfigError(
            f"config.eval.context_prefix={e.context_prefix!r} must be one of {', '.join(CONTEXT_PREFIXES)} "
            '("auto": the tokenizer\'s convention, BOS for gptx-trained models, none for GPT-2)'
        )


def tokenizer_for(cfg: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """config.data.tokenizer, else WORKDIR's tokenizer, else the parent's (the demo keeps its tokenizer in
    the demo workdir and the pretrained model in WORKDIR/pretrain)."""
    if cfg.data.tokenizer:
        return cfg
    for directory in (workdir, os.path.dirname(workdir)):
        if path := tokenizer_lib.find(directory):
            cfg = ml_collections.ConfigDict(cfg.to_dict())
            cfg.data.tokenizer = path
            return cfg
    raise FileNotFoundError(
        f"no tokenizer (tokenizer.model, tokenizer.json, vocab.json + merges.txt) in {workdir} or its parent: set "
        "--config.data.tokenizer=PATH (gptx evaluates text through the tokenizer the model was trained with)"
    )


def load_lm(cfg: ml_collections.ConfigDict, workdir: str, mesh=None) -> LM:
    """The LM of the latest checkpoint in workdir, sharded on the config's mesh."""

    cfg = tokenizer_for(cfg, os.path.abspath(workdir).rstrip("/"))
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    model, params, tok = pretrain.load_trained(cfg, workdir)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"config.model.vocab_size={cfg.model.vocab_size} < the tokenizer's {tok.vocab_size} pieces")
    return LM(
        model, params, tok, batch_size=cfg.eval.batch_size, mesh=mesh, context_prefix=cfg.eval.context_prefix,
        progress=cfg.train.progress,
    )  # fmt: skip


def make_grader(cfg: ml_collections.ConfigDict, lm: LM) -> M.Grader | None:
    """config.eval.grader: "" none, "self" the evaluated model, else a workdir of a grader with config.model."""
    if not cfg.eval.grader:
        return None
    return M.ModelGrader(lm if cfg.eval.grader == "self" else load_lm(cfg, cfg.eval.grader, lm.mesh))


def evaluate(cfg: ml_collections.ConfigDict, lm: LM, grader: M.Grader | None = None) -> dict[str, Any]:
    """Results of every configured task and shot count: {"results": {task: {shots: {...}}}, "tasks": {...}}."""
    e = cfg.eval
    shots = parse_shots(e.shots)
    results, info = {}, {}
    for name in task_names(cfg):
        task = T.get(name)
        t0 = time.perf_counter()
        data = harness.load_task(task, e.data_dir, e.limit)
        results[name] = harness.evaluate_task(
            lm, data, shots, seed=e.seed, max_new_tokens=e.max_new_tokens, rolling_stride=e.rolling_stride,
            grader=grader, examples=e.examples,
        )  # fmt: skip
        info[name] = {"kind": task.kind, "malformed": data.malformed, "seconds": time.perf_counter() - t0}
        if task.note:
            info[name]["note"] = task.note
        logging.info("%s: %s", name, results[name])
    return {"results": results, "tasks": info}


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The `eval` command: evaluate, print the table, write the JSON."""
    validate_eval(cfg)
    lm = load_lm(cfg, workdir)
    out = evaluate(cfg, lm, make_grader(cfg, lm))
    out["config"] = {"workdir": os.path.abspath(workdir), **cfg.eval.to_dict(), "model": cfg.model.to_dict()}
    if jax.process_index() == 0:
        print(harness.format_table(out["results"]))
        path = cfg.eval.output or os.path.join(workdir, RESULTS)
        logs.write_json(path, out)
        print(f"results -> {path}")
    return out
