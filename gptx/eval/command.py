"""`python -m gptx.main eval --config=configs/eval.py --workdir=CHECKPOINT_WORKDIR`.

Evaluates the latest checkpoint of a workdir on config.eval.tasks (built-in names, groups, task files) at each
of config.eval.shots, prints a table and writes JSON (per task, per shot count: metrics, standard errors, n,
demonstrations used; the checkpoint step, tokenizer, gptx version and config) to config.eval.output, by default
WORKDIR/eval_results.json, and one record per doc and shot count beside it (eval_results.examples.jsonl).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

import gptx
from gptx import fs
from gptx import mesh as mesh_lib
from gptx.config import ConfigError
from gptx.data import tokenizer as tokenizer_lib
from gptx.data.sources import DataError
from gptx.eval import code, harness, sandbox, taskfile
from gptx.eval import metrics as M
from gptx.eval import tasks as T
from gptx.eval.cache import RequestCache
from gptx.eval.requests import CONTEXT_PREFIXES, LM
from gptx.train import checkpoints, integrity, logs, pretrain

RESULTS = "eval_results.json"


def parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"config.eval.shots={text!r} must be comma-separated integers, e.g. 0,1,8") from None
    if not shots or min(shots) < 0:
        raise ConfigError(f"config.eval.shots={text!r} must list shot counts >= 0")
    return sorted(dict.fromkeys(shots))


def resolve_tasks(cfg: ml_collections.ConfigDict) -> list[T.Task]:
    """The tasks config.eval.tasks names: built-in task names, group names and task files, comma-separated."""
    entries = [t.strip() for t in cfg.eval.tasks.split(",") if t.strip()]
    if not entries:
        raise ConfigError("config.eval.tasks is empty: name built-in tasks, groups or task files, comma-separated")
    try:
        return taskfile.resolve_all(entries)
    except (DataError, OSError) as e:
        raise ConfigError(f"config.eval.tasks: {e}") from None


def task_names(cfg: ml_collections.ConfigDict) -> list[str]:
    return [t.name for t in resolve_tasks(cfg)]


def validate_eval(cfg: ml_collections.ConfigDict) -> None:
    """ConfigError for config.eval values that cannot run."""
    e = cfg.eval
    task_names(cfg)
    parse_shots(e.shots)
    for key in ("batch_size",):
        if e[key] <= 0:
            raise ConfigError(f"config.eval.{key}={e[key]} must be positive")
    for key in ("limit", "max_new_tokens", "rolling_stride", "examples", "samples", "sandbox_workers"):
        if e[key] < 0:
            raise ConfigError(f"config.eval.{key}={e[key]} must be >= 0")
    if not 0.0 <= e.top_p <= 1.0 or e.sandbox_timeout <= 0 or e.sandbox_memory_mb <= 0:
        raise ConfigError(
            f"config.eval.top_p={e.top_p} must be in [0, 1] (0: the task's), sandbox_timeout and sandbox_memory_mb "
            "positive"
        )
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
    for directory in (workdir, fs.dirname(workdir)):
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

    cfg = tokenizer_for(cfg, fs.absolute(workdir).rstrip("/"))
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    model, params, tok = pretrain.load_trained(cfg, workdir)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"config.model.vocab_size={cfg.model.vocab_size} < the tokenizer's {tok.vocab_size} pieces")
    return LM(
        model, params, tok, batch_size=cfg.eval.batch_size, mesh=mesh, context_prefix=cfg.eval.context_prefix,
        progress=cfg.train.progress, cache=request_cache(cfg, workdir, model),
    )  # fmt: skip


def request_cache(cfg: ml_collections.ConfigDict, workdir: str, model) -> RequestCache | None:
    """WORKDIR/eval_cache/ of the latest checkpoint (config.eval.cache), for one process on a local workdir: every
    process must run the same batches, and object stores cannot append."""
    if not cfg.eval.cache or jax.process_count() > 1 or fs.is_remote(workdir):
        return None
    scored_by = {k: getattr(model.cfg, k) for k in integrity.SHAPE_KEYS} | {"dtype": str(model.cfg.dtype)}
    return RequestCache.for_checkpoint(str(workdir), checkpoints.latest_step(workdir), scored_by)


def make_grader(cfg: ml_collections.ConfigDict, lm: LM) -> M.Grader | None:
    """config.eval.grader: "" none, "self" the evaluated model, else a workdir of a grader with config.model."""
    if not cfg.eval.grader:
        return None
    return M.ModelGrader(lm if cfg.eval.grader == "self" else load_lm(cfg, cfg.eval.grader, lm.mesh))


def code_settings(e: ml_collections.ConfigDict) -> code.Settings:
    """How code tasks sample and run their programs (config.eval.samples, temperature, top_p, sandbox_*)."""
    timeout = float(e.sandbox_timeout)
    limits = sandbox.Limits(timeout_s=timeout, cpu_s=max(1, int(timeout)), memory_mb=int(e.sandbox_memory_mb))
    return code.Settings(e.samples, float(e.temperature), float(e.top_p), limits, e.sandbox_workers)


def evaluate(
    cfg: ml_collections.ConfigDict,
    lm: LM,
    grader: M.Grader | None = None,
    per_example: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Results of every configured task and shot count: {"results": {task: {shots: {...}}}, "tasks": {...}};
    `per_example`, when given, receives a record per doc and shot count (harness.example_records)."""
    e = cfg.eval
    shots = parse_shots(e.shots)
    results, info = {}, {}
    for task in resolve_tasks(cfg):
        name = task.name
        t0 = time.perf_counter()
        data = harness.load_task(task, e.data_dir, e.limit)
        results[name] = harness.evaluate_task(
            lm, data, shots, seed=e.seed, max_new_tokens=e.max_new_tokens, rolling_stride=e.rolling_stride,
            grader=grader, examples=e.examples, code_settings=code_settings(e), per_example=per_example,
        )  # fmt: skip
        info[name] = {
            "kind": task.kind, "malformed": data.malformed, "malformed_lines": data.malformed_lines,
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        for path, lines in data.malformed_lines.items():
            if lines:
                where = ", ".join(f"{path}:{n}" for n in lines[:10]) + (" ..." if len(lines) > 10 else "")
                logging.warning("%s: %d malformed record(s) skipped: %s", name, len(lines), where)
        if task.note:
            info[name]["note"] = task.note
        logging.info("%s: %s", name, results[name])
    return {"results": results, "tasks": info}


def provenance(cfg: ml_collections.ConfigDict, workdir: str, lm: LM) -> dict[str, Any]:
    """What a result was measured on: the checkpoint step, the tokenizer, the gptx version."""
    tok_cfg = tokenizer_for(cfg, fs.absolute(workdir).rstrip("/"))
    return {
        "workdir": fs.absolute(workdir),
        "checkpoint_step": checkpoints.latest_step(workdir),
        "tokenizer": {
            "path": fs.absolute(pretrain.tokenizer_path(tok_cfg, workdir)),
            "kind": type(lm.tokenizer).__name__,
            "vocab_size": getattr(lm.tokenizer, "vocab_size", None),
            "context_prefix": {"context": list(lm.prefix.context), "start": list(lm.prefix.start)},
        },
        "gptx_version": gptx.__version__,
    }


def examples_path(results_path: str) -> str:
    """The per-example JSONL beside a results JSON: eval_results.json -> eval_results.examples.jsonl."""
    return os.path.splitext(results_path)[0] + ".examples.jsonl"


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The `eval` command: evaluate, print the table, write the JSON summary and the per-example JSONL."""
    validate_eval(cfg)
    lm = load_lm(cfg, workdir)
    per_example: list[dict[str, Any]] = []
    out = evaluate(cfg, lm, make_grader(cfg, lm), per_example)
    out["run"] = provenance(cfg, workdir, lm)
    out["config"] = cfg.to_dict()
    if jax.process_index() == 0:
        print(harness.format_table(out["results"]))
        path = cfg.eval.output or fs.join(workdir, RESULTS)
        out["run"]["examples"] = examples_path(path)
        write_jsonl(out["run"]["examples"], per_example)
        logs.write_json(path, out)
        print(f"results -> {path}\nper example -> {out['run']['examples']}")
    return out


def write_jsonl(path: str, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line, whole or not at all (fs.write_atomic: a reader never sees half a file)."""
    fs.write_atomic(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))
