"""GPT-1 supervised fine-tuning (Radford et al., 2018, Sec. 3.2-3.3): the `finetune` command.

A pretrained GPT (`config.finetune.init_from`: the workdir of a `train`/`convert` run; "" = random init) reads
each task through the paper's input transformations (gptx/data/finetune_tasks.py); a linear head
(gptx/models/heads.py `FinetuneModel`) on the final hidden state of the extract token gives the task's logits, and the
objective is L3 = L2 (task cross-entropy) + λ·L1 (auxiliary LM loss on the same sequences), λ = aux_lm_coef.

  classification / entailment: one sequence, logits = head(h_extract)
  similarity: both orderings, logits = head(h_extract(a;b) + h_extract(b;a))
  multiple choice: one sequence per choice, a scalar head(h_extract(context;choice_k)) each, softmax over k

The "second paradigm" (several tasks at once, `finetune.tasks = "sst2,rte,..."`): one model, a task token
right after [start] selects the task, and each task keeps its own head (label sets differ in size and meaning;
per-task heads cost D x classes parameters each). Every batch mixes tasks in proportion to their training
sets; all examples are padded to the largest number of sequences per example and of logits among the tasks,
the unused slots masked out, so one jitted step serves every task.

The auxiliary LM loss is the mean next-token cross-entropy over every real token of every sequence of the
batch (special tokens included as targets, padding not). The recipe (configs/finetune.py): dropout 0.1 in the
body and the classifier, Adam lr 6.25e-5 with linear warmup over 0.2% of training then linear decay to 0,
batch 32, 3 epochs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from gptx import config as config_lib
from gptx import flops as flops_lib
from gptx import fs
from gptx import mesh as mesh_lib
from gptx.data import finetune_tasks as ft
from gptx.data import paths
from gptx.data import tokenizer as tokenizer_lib
from gptx.data.finetune_batches import Encoding, eval_dataset, train_dataset
from gptx.models import GPTConfig, heads, vocab_tiling
from gptx.train import checkpoints, integrity, logs, loop, pretrain
from gptx.train import step as step_lib
from gptx.train.state import TrainState, linear_schedule, make_optimizer

RESULTS = "finetune_results.json"
TRAIN_SAMPLE = 512  # training examples scored after fine-tuning


def finetune_defaults() -> ml_collections.ConfigDict:
    """The `finetune` config section (its schema lives in gptx/config.py with every other section)."""
    return config_lib.default().finetune


def validate_finetune(cfg: ml_collections.ConfigDict) -> None:
    """ConfigError naming the key for a finetune section that cannot run."""
    f = cfg.finetune
    names = task_names(cfg)
    unknown = [n for n in names if n not in ft.TASKS]
    if not names or unknown:
        raise config_lib.ConfigError(
            f"config.finetune.tasks={f.tasks!r}: unknown task(s) {unknown}; known: {', '.join(ft.TASKS)}"
        )
    if f.epochs < 0 or f.aux_lm_coef < 0 or f.train_limit < 0 or f.eval_limit < 0:
        raise config_lib.ConfigError("config.finetune.{epochs,aux_lm_coef,train_limit,eval_limit} must be >= 0")
    for key in ("clf_dropout", "warmup_fraction", "eval_fraction"):
        if not 0.0 <= f[key] < 1.0:
            raise config_lib.ConfigError(f"config.finetune.{key}={f[key]} must be in [0, 1)")


def task_names(cfg: ml_collections.ConfigDict) -> list[str]:
    return [n.strip() for n in cfg.finetune.tasks.split(",") if n.strip()]


# ------------------------------------------------------------------------------------------------------------
# Model and loss

POOLING = {
    ft.CLASSIFICATION: heads.ONE,
    ft.ENTAILMENT: heads.ONE,
    ft.SIMILARITY: heads.SUM,
    ft.MULTIPLE_CHOICE: heads.CHOICES,
}


def task_head(spec: ft.TaskSpec) -> heads.TaskHead:
    return heads.TaskHead(spec.name, POOLING[spec.kind], spec.n_outputs)


def make_model(cfg: ml_collections.ConfigDict, task_heads: tuple[heads.TaskHead, ...]) -> heads.FinetuneModel:
    return heads.FinetuneModel(GPTConfig.from_config(cfg.model), task_heads, cfg.finetune.clf_dropout)


def loss(model: heads.FinetuneModel, aux_lm_coef: float) -> step_lib.Loss:
    """L3 = L2 + λ·L1. L2: mean task cross-entropy over the batch's real examples (weight 1); L1: mean next-token
    cross-entropy over the real tokens of the used sequences. Both means are over the whole batch, however it
    is split into micro-batches. Metrics: clf_loss, accuracy, lm_loss (when λ > 0)."""

    def norms(batch):
        return {"examples": jnp.sum(batch["weight"]), "tokens": jnp.sum(_lm_target_weights(batch))}

    def fn(params, batch, rng, norms):
        logits, hidden = apply(model, params, batch, rng, with_lm=aux_lm_coef > 0)
        w, label = batch["weight"][:, 0], batch["label"][:, 0]
        n = jnp.maximum(norms["examples"], 1.0)
        clf = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, label) * w) / n
        metrics = {"clf_loss": clf, "accuracy": jnp.sum((jnp.argmax(logits, -1) == label) * w) / n}
        if hidden is None:
            return clf, metrics
        tw = _lm_target_weights(batch)
        metrics["lm_loss"] = -jnp.sum(lm_logprobs(model, params, hidden, batch["tokens"]) * tw) / jnp.maximum(
            norms["tokens"], 1.0
        )
        return clf + aux_lm_coef * metrics["lm_loss"], metrics

    return step_lib.Loss(fn=fn, norms=norms)


def lm_logprobs(model: heads.FinetuneModel, params, hidden: jax.Array, tokens: jax.Array) -> jax.Array:
    """log p(next token) [B, S, T-1] of the sequences' hidden states [B, S, T, D], vocab-tiled."""
    b, s, t, d = hidden.shape
    wte = nn.meta.unbox(params["gpt"]["wte"])
    logp, _ = vocab_tiling.token_logprobs(
        hidden[:, :, :-1].reshape(b * s, t - 1, d),  # [B·S, T-1, D]
        wte,
        tokens[..., 1:].reshape(b * s, t - 1),
        chunk=model.cfg.logits_chunk,
    )
    return logp.reshape(b, s, t - 1)


def _lm_target_weights(batch) -> jax.Array:
    """[B, S, T-1]: 1 where both a token and its next-token target are real, in a used sequence of a real example."""
    real = batch["segment_ids"][..., 1:] > 0
    return real * (batch["seq_mask"] * batch["weight"])[:, :, None]


def apply(model: heads.FinetuneModel, params, batch, rng: jax.Array | None = None, with_lm: bool = False):
    """(task logits [B, C], final hidden states [B, S, T, D] or None) of a batch; rng None: dropout off."""
    return model.apply(
        {"params": params},
        batch["tokens"],
        batch["segment_ids"],
        batch["extract_pos"],
        batch["seq_mask"],
        batch["task"],
        deterministic=rng is None,
        with_lm=with_lm,
        rngs=None if rng is None else {"dropout": rng},
    )


def make_predict(model: heads.FinetuneModel):
    """`(params, batch) -> predicted label [B, 1]` (dropout off)."""

    def predict(params, batch):
        logits, _ = apply(model, params, batch)
        return jnp.argmax(logits, -1)[:, None].astype(jnp.int32)

    return predict


# ------------------------------------------------------------------------------------------------------------
# Initialisation


def _dummy_inputs(n_seqs: int, seq_len: int) -> tuple[jax.Array, ...]:
    return (
        jnp.zeros((1, n_seqs, seq_len), jnp.int32),
        jnp.ones((1, n_seqs, seq_len), jnp.int32),
        jnp.zeros((1, n_seqs), jnp.int32),
        jnp.ones((1, n_seqs), jnp.float32),
        jnp.zeros((1, 1), jnp.int32),
    )


def load_pretrained_params(workdir: str, model: heads.FinetuneModel, mesh: Mesh) -> Any:
    """The GPT params of the latest checkpoint of a `train`/`convert` run, each in the sharding of the fine-tuning
    body's parameter (its token table may be smaller: grown by `make_init_fn`)."""
    target = checkpoints.abstract_params(model, *_dummy_inputs(1, 1))["gpt"]
    try:
        params, step = checkpoints.restore_params(workdir, mesh, target, strict=False)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config.finetune.init_from: {e}") from None
    logging.info("loaded pretrained params of step %d from %s", step, workdir)
    return params


def make_init_fn(model: heads.FinetuneModel, tx, n_seqs: int, seq_len: int, pretrained: Any | None):
    """rng -> TrainState (annotated params); the GPT body from `pretrained` when given."""
    dummy = _dummy_inputs(n_seqs, seq_len)

    def init_fn(rng: jax.Array) -> TrainState:
        init_rng, grow_rng = jax.random.split(rng)
        params = model.init(init_rng, *dummy)["params"]
        if pretrained is not None:
            body = checkpoints.merge_params(params["gpt"], pretrained, grow_rng, model.cfg.init_std)
            params = {**params, "gpt": body}
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    return init_fn


# ------------------------------------------------------------------------------------------------------------
# Data


def read_task(cfg: ml_collections.ConfigDict, spec: ft.TaskSpec) -> tuple[list, list, dict[str, Any]]:
    """(train examples, dev examples, report) of one task; tasks without a dev file are split with a fixed seed."""
    f = cfg.finetune
    train = spec.reader(paths.data_path(f.data_dir, spec.train))
    report = {"train_file": train.path, "malformed": {train.path: train.malformed}}
    if spec.dev is None:
        train_ex, dev_ex = ft.split(train.examples, f.eval_fraction, cfg.data.seed)
        report["dev_file"] = f"{train.path} (held-out {f.eval_fraction:.0%}, seed {cfg.data.seed})"
    else:
        dev = spec.reader(paths.data_path(f.data_dir, spec.dev))
        report["malformed"][dev.path] = dev.malformed
        report["dev_file"] = dev.path
        train_ex, dev_ex = train.examples, dev.examples
        if dev.malformed:
            logging.warning("%s", dev.summary())
    if train.malformed:
        logging.warning("%s", train.summary())
    if f.train_limit:
        order = np.random.default_rng(cfg.data.seed).permutation(len(train_ex))[: f.train_limit]
        train_ex = [train_ex[i] for i in sorted(order)]
    if f.eval_limit:
        dev_ex = dev_ex[: f.eval_limit]
    return train_ex, dev_ex, report


def grow_vocab_for(cfg: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer) -> ml_collections.ConfigDict:
    """`cfg` with config.model.vocab_size raised to hold the tokenizer and the fine-tuning tokens when smaller."""
    n = len(task_names(cfg))
    needed = ft.SpecialTokens.for_tokenizer(tok.vocab_size, n if n > 1 else 0).vocab_needed
    if needed <= cfg.model.vocab_size:
        return cfg
    logging.info("config.model.vocab_size %d -> %d: room for the fine-tuning tokens", cfg.model.vocab_size, needed)
    out = cfg.copy_and_resolve_references()
    out.model.vocab_size = needed
    return out


def special_tokens(cfg: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer) -> ft.SpecialTokens:
    """start/delim/extract (and task tokens when several tasks run) after the tokenizer's pieces."""
    n = len(task_names(cfg))
    special = ft.SpecialTokens.for_tokenizer(tok.vocab_size, n if n > 1 else 0)
    if special.vocab_needed > cfg.model.vocab_size:
        raise config_lib.ConfigError(
            f"config.model.vocab_size={cfg.model.vocab_size} leaves no room for the fine-tuning tokens: the "
            f"tokenizer has {tok.vocab_size} pieces and start/delim/extract{'/task' if n > 1 else ''} need ids up "
            f"to {special.vocab_needed - 1}; set it to at least {special.vocab_needed}"
        )
    return special


# ------------------------------------------------------------------------------------------------------------
# The command


def make_trainer(cfg, model: heads.FinetuneModel, encoding: Encoding, train_items, dev_items, pretrained=None):
    """The Trainer of a fine-tuning run of cfg.train.steps optimizer steps."""
    t = cfg.train
    schedule = linear_schedule(t.lr, t.steps, cfg.finetune.warmup_fraction)
    b = t.batch_size
    tokens = b * encoding.n_seqs * encoding.seq_len
    return loop.Trainer(
        init_fn=make_init_fn(model, make_optimizer(t, schedule), encoding.n_seqs, encoding.seq_len, pretrained),
        train_step=step_lib.make_train_step(
            loss(model, cfg.finetune.aux_lm_coef), grad_accum=t.grad_accum, lr_fn=schedule
        ),
        train_data=train_dataset(train_items, encoding, b, cfg.data.seed),
        eval_step=step_lib.make_eval_step(loss(model, 0.0), "examples"),
        eval_data=(lambda: eval_dataset(dev_items, encoding, b)) if dev_items else None,
        flops_per_step=flops_lib.flops_per_token(model.cfg, encoding.seq_len) * tokens,
        tokens_per_step=tokens,
    )


def accuracy(model, params, items, encoding: Encoding, batch_size: int, mesh: Mesh) -> dict[str, dict]:
    """Per-task accuracy of `params` on (task, example) items."""
    predict = jax.jit(make_predict(model))
    correct = np.zeros(len(encoding.specs))
    count = np.zeros(len(encoding.specs))
    with mesh_lib.activation_rules(mesh):
        for batch in eval_dataset(items, encoding, batch_size):
            pred = predict(params, mesh_lib.put_batch(mesh, batch))
            if jax.process_count() > 1:  # every process scores the whole batch
                pred = multihost_utils.process_allgather(pred, tiled=True)
                batch = multihost_utils.process_allgather(batch, tiled=True)
            pred = np.asarray(jax.device_get(pred))[:, 0]
            w, task, label = batch["weight"][:, 0], batch["task"][:, 0], batch["label"][:, 0]
            np.add.at(correct, task, w * (pred == label))
            np.add.at(count, task, w)
    return {
        s.name: {"accuracy": float(correct[i] / max(count[i], 1)), "examples": int(count[i])}
        for i, s in enumerate(encoding.specs)
    }


def run(cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None = None) -> dict[str, Any]:
    """`gptx.main finetune`: fine-tunes on config.finetune.tasks, writes and prints dev accuracy per task."""
    validate_finetune(cfg)
    cfg = integrity.with_model_of(cfg, cfg.finetune.init_from, grow_vocab=True)
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    tok = pretrain.resolve_tokenizer(cfg, workdir, (cfg.finetune.init_from,))
    if cfg.finetune.init_from:  # the pretrained table grows by the task tokens (checkpoints.grow_embedding)
        cfg = grow_vocab_for(cfg, tok)
    special = special_tokens(cfg, tok)
    specs = tuple(ft.TASKS[n] for n in task_names(cfg))
    encoding = Encoding(tok, special, specs, config_lib.seq_len(cfg))

    train_items, dev_items, reports = [], [], {}
    for i, spec in enumerate(specs):
        train_ex, dev_ex, reports[spec.name] = read_task(cfg, spec)
        train_items += [(i, ex) for ex in train_ex]
        dev_items += [(i, ex) for ex in dev_ex]
        reports[spec.name].update(train_examples=len(train_ex), dev_examples=len(dev_ex))
        logging.info("%s: %d train, %d dev examples", spec.name, len(train_ex), len(dev_ex))

    f = cfg.finetune
    steps = math.ceil(f.epochs * len(train_items) / cfg.train.batch_size) if f.epochs else cfg.train.steps
    run_cfg = cfg.copy_and_resolve_references()
    run_cfg.train.steps = max(steps, 1)
    model = make_model(cfg, tuple(task_head(s) for s in specs))
    with mesh_lib.activation_rules(mesh):
        pretrained = load_pretrained_params(f.init_from, model, mesh) if f.init_from else None
    trainer = make_trainer(run_cfg, model, encoding, train_items, dev_items, pretrained)
    result = loop.train(trainer, run_cfg, workdir, mesh)

    accs = accuracy(model, result.state.params, dev_items, encoding, cfg.train.batch_size, mesh)
    # Accuracy on a fixed sample of the training set, to tell under- from over-fitting.
    sample = [train_items[i] for i in np.random.default_rng(0).permutation(len(train_items))[:TRAIN_SAMPLE]]
    train_accs = accuracy(model, result.state.params, sample, encoding, cfg.train.batch_size, mesh)
    last = {k: v for row in result.history for k, v in row.items()}
    out = {
        "tasks": {
            name: {**reports[name], **accs[name], "train_accuracy": train_accs[name]["accuracy"]} for name in reports
        },
        "steps": int(result.state.step),
        "init_from": f.init_from or "random",
        "final_train_loss": last.get("loss"),
        "special_tokens": dataclasses.asdict(special),
    }
    logs.write_json(fs.join(workdir, RESULTS), out)
    if jax.process_index() == 0:
        for name, r in out["tasks"].items():
            print(f"{name}: dev accuracy {r['accuracy']:.4f} on {r['examples']} examples ({r['dev_file']})")
    return out
