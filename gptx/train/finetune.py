"""GPT-1 supervised fine-tuning (Radford et al., 2018, Sec. 3.2-3.3): the `finetune` command.

A pretrained GPT (`config.finetune.init_from`: the workdir of a `train`/`convert` run; "" = random init) reads
each task through the paper's input transformations (gptx/data/finetune_tasks.py); a linear head
(gptx/models/heads.py) on the final hidden state of the extract token gives the task's logits, and the
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
import os
from typing import Any

import grain
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
from gptx import mesh as mesh_lib
from gptx.data import finetune_tasks as ft
from gptx.data import tokenizer as tokenizer_lib
from gptx.models import GPT, GPTConfig
from gptx.models.heads import ClassifierHead
from gptx.train import logs, loop
from gptx.train.state import TrainState, decay_mask

NEG = -1e9  # logit of an unused class / choice slot
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    if cfg.train.grad_accum != 1:
        raise config_lib.ConfigError("config.train.grad_accum must be 1 for finetune (batches are small)")


def task_names(cfg: ml_collections.ConfigDict) -> list[str]:
    return [n.strip() for n in cfg.finetune.tasks.split(",") if n.strip()]


# ------------------------------------------------------------------------------------------------------------
# Model


@dataclasses.dataclass(frozen=True)
class TaskHead:
    """What the model needs to know of a task: its name, input transformation and number of outputs."""

    name: str
    kind: str
    n_out: int


class FinetuneModel(nn.Module):
    """GPT body (params under `gpt`) plus one `ClassifierHead` per task (`head_<task>`).

    Inputs (per example b, sequence s): tokens/segment_ids [B, S, T], extract_pos/seq_mask [B, S], task [B, 1].
    Returns logits [B, C] (C = the most outputs of any task; unused slots NEG) and, when `with_lm`, the LM
    logits [B, S, T, V] of the same sequences (tied embedding, as in pretraining).
    """

    cfg: GPTConfig
    tasks: tuple[TaskHead, ...]
    clf_dropout: float = 0.1

    @property
    def n_out(self) -> int:
        return max(t.n_out for t in self.tasks)

    @nn.compact
    def __call__(self, tokens, segment_ids, extract_pos, seq_mask, task, *, deterministic=True, with_lm=False):
        b, s, t = tokens.shape
        gpt = GPT(self.cfg, name="gpt")
        hidden = gpt(
            tokens.reshape(b * s, t),
            None,
            segment_ids.reshape(b * s, t),
            deterministic=deterministic,
            return_hidden=True,
        ).reshape(b, s, t, -1)  # [B, S, T, D]
        h = jnp.take_along_axis(hidden, extract_pos[:, :, None, None], axis=2)[:, :, 0]  # [B, S, D]
        logits = jnp.full((b, self.n_out), NEG, jnp.float32)
        for k, spec in enumerate(self.tasks):
            head = ClassifierHead(
                1 if spec.kind == ft.MULTIPLE_CHOICE else spec.n_out,
                dropout=self.clf_dropout,
                init_std=self.cfg.init_std,
                dtype=self.cfg.dtype,
                param_dtype=self.cfg.param_dtype,
                name=f"head_{spec.name}",
            )
            if spec.kind == ft.MULTIPLE_CHOICE:
                out = jnp.where(seq_mask > 0, head(h, deterministic=deterministic)[..., 0], NEG)  # [B, S]
            elif spec.kind == ft.SIMILARITY:
                out = head(h[:, 0] + h[:, 1], deterministic=deterministic)  # both orderings, summed
            else:
                out = head(h[:, 0], deterministic=deterministic)
            out = out[:, : self.n_out]
            out = jnp.pad(out, ((0, 0), (0, self.n_out - out.shape[1])), constant_values=NEG)
            logits = jnp.where(task == k, out, logits)
        if not with_lm:
            return logits, None
        wte = nn.meta.unbox(gpt.variables["params"]["wte"])
        lm_logits = jnp.einsum("bstd,vd->bstv", hidden, wte.astype(hidden.dtype)).astype(jnp.float32)
        return logits, lm_logits


def losses(params, batch, rng, model: FinetuneModel, aux_lm_coef: float, deterministic: bool):
    """(L3 = L2 + λ·L1, metrics). L2: mean task cross-entropy over real examples (weight 1); L1: mean next-token
    cross-entropy over the real tokens of the used sequences."""
    logits, lm_logits = model.apply(
        {"params": params},
        batch["tokens"],
        batch["segment_ids"],
        batch["extract_pos"],
        batch["seq_mask"],
        batch["task"],
        deterministic=deterministic,
        with_lm=aux_lm_coef > 0,
        rngs=None if deterministic else {"dropout": rng},
    )
    w, label = batch["weight"][:, 0], batch["label"][:, 0]
    n = jnp.maximum(jnp.sum(w), 1.0)
    clf = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, label) * w) / n
    acc = jnp.sum((jnp.argmax(logits, -1) == label) * w) / n
    metrics = {"clf_loss": clf, "accuracy": acc}
    loss = clf
    if lm_logits is not None:
        lm = lm_loss(lm_logits, batch)
        metrics["lm_loss"] = lm
        loss = clf + aux_lm_coef * lm
    metrics["loss"] = loss
    return loss, metrics


def lm_loss(lm_logits: jax.Array, batch) -> jax.Array:
    """Mean next-token cross-entropy of [B, S, T, V] logits where both the token and its target are real."""
    targets = batch["tokens"][..., 1:]
    real = batch["segment_ids"][..., 1:] > 0
    tw = real * (batch["seq_mask"] * batch["weight"])[:, :, None]
    ce = optax.softmax_cross_entropy_with_integer_labels(lm_logits[..., :-1, :], targets)
    return jnp.sum(ce * tw) / jnp.maximum(jnp.sum(tw), 1.0)


def make_train_step(model: FinetuneModel, aux_lm_coef: float, lr_fn=None):
    """Pure `(state, batch, rng) -> (state, metrics)`: one Adam step on L3."""
    grad_fn = jax.value_and_grad(losses, has_aux=True)

    def step(state: TrainState, batch, rng):
        (_, metrics), grads = grad_fn(state.params, batch, rng, model, aux_lm_coef, False)
        metrics["grad_norm"] = optax.global_norm(grads)
        if lr_fn is not None:
            metrics["lr"] = lr_fn(state.step)
        return state.apply_gradients(grads=grads), metrics

    return step


def make_eval_step(model: FinetuneModel):
    """`(params, batch) -> (task cross-entropy sum, examples)` for the loop's periodic eval_loss."""

    def step(params, batch):
        _, m = losses(params, batch, None, model, 0.0, True)
        n = jnp.sum(batch["weight"])
        return m["clf_loss"] * jnp.maximum(n, 1.0), n

    return step


def make_predict(model: FinetuneModel):
    """`(params, batch) -> predicted label [B, 1]` (dropout off)."""

    def predict(params, batch):
        logits, _ = model.apply(
            {"params": params},
            batch["tokens"],
            batch["segment_ids"],
            batch["extract_pos"],
            batch["seq_mask"],
            batch["task"],
        )
        return jnp.argmax(logits, -1)[:, None].astype(jnp.int32)

    return predict


# ------------------------------------------------------------------------------------------------------------
# Optimizer and initialisation


def lr_schedule(t: ml_collections.ConfigDict, steps: int, warmup_fraction: float) -> optax.Schedule:
    """GPT-1 fine-tuning: linear warmup over `warmup_fraction` of the steps (at least 1), linear decay to 0."""
    warmup = max(1, math.ceil(steps * warmup_fraction))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, t.lr, warmup), optax.linear_schedule(t.lr, 0.0, max(steps - warmup, 1))],
        [warmup],
    )


def make_optimizer(t: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, mask=decay_mask),
    )


def grow_embedding(wte: jax.Array, vocab_size: int, rng: jax.Array, std: float = 0.02) -> jax.Array:
    """The token table with rows appended up to `vocab_size` (new special tokens), drawn from N(0, std²);
    the existing rows are kept exactly."""
    n, d = wte.shape
    if n > vocab_size:
        raise ValueError(f"the pretrained embedding has {n} rows, more than config.model.vocab_size={vocab_size}")
    if n == vocab_size:
        return wte
    new = std * jax.random.normal(rng, (vocab_size - n, d), wte.dtype)
    return jnp.concatenate([wte, new], axis=0)


def load_pretrained_params(workdir: str, mesh: Mesh) -> dict[str, Any]:
    """The GPT params of the latest checkpoint in WORKDIR/checkpoints, shapes read from the checkpoint itself
    (so its vocabulary may be smaller than the fine-tuning model's), replicated on `mesh`."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")) or not os.listdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(
            f"config.finetune.init_from: no checkpoint in {os.path.abspath(workdir)}/checkpoints; pretrain or "
            "convert first"
        )
    state, step = loop.restore_saved_state(workdir, mesh)
    logging.info("loaded pretrained params of step %d from %s", step, workdir)
    return state["params"]


def merge_pretrained(boxed: Any, pretrained: Any, rng: jax.Array, init_std: float) -> Any:
    """`boxed` (annotated params of the fine-tuning GPT) with values from `pretrained`; wte is grown when the
    checkpoint's vocabulary is smaller. A missing or differently shaped parameter is a ValueError naming it."""

    def take(path, box):
        name = "/".join(str(k.key) for k in path)
        value = pretrained
        for k in path:
            if k.key not in value:
                raise ValueError(f"pretrained checkpoint has no parameter {name}: does config.model match it?")
            value = value[k.key]
        want = box.value.shape if isinstance(box, nn.LogicallyPartitioned) else box.shape
        if name == "wte":
            value = grow_embedding(jnp.asarray(value), want[0], rng, init_std)
        if tuple(value.shape) != tuple(want):
            raise ValueError(
                f"pretrained {name} has shape {tuple(value.shape)}, config.model implies {tuple(want)}: pass the "
                "--config.model.* values the checkpoint was trained with"
            )
        value = jnp.asarray(value, box.value.dtype if isinstance(box, nn.LogicallyPartitioned) else box.dtype)
        return box.replace_boxed(value) if isinstance(box, nn.LogicallyPartitioned) else value

    return jax.tree_util.tree_map_with_path(take, boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def make_model(cfg: ml_collections.ConfigDict, heads: tuple[TaskHead, ...]) -> FinetuneModel:
    return FinetuneModel(GPTConfig.from_config(cfg.model), heads, cfg.finetune.clf_dropout)


def make_init_fn(model: FinetuneModel, tx, n_seqs: int, seq_len: int, pretrained: Any | None):
    """rng -> TrainState (annotated params); the GPT body from `pretrained` when given."""
    dummy = (
        jnp.zeros((1, n_seqs, seq_len), jnp.int32),
        jnp.ones((1, n_seqs, seq_len), jnp.int32),
        jnp.zeros((1, n_seqs), jnp.int32),
        jnp.ones((1, n_seqs), jnp.float32),
        jnp.zeros((1, 1), jnp.int32),
    )

    def init_fn(rng: jax.Array) -> TrainState:
        init_rng, grow_rng = jax.random.split(rng)
        params = model.init(init_rng, *dummy)["params"]
        if pretrained is not None:
            params = {**params, "gpt": merge_pretrained(params["gpt"], pretrained, grow_rng, model.cfg.init_std)}
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    return init_fn


# ------------------------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How examples become fixed-shape arrays: tokenizer, special ids, tasks and shapes."""

    tokenizer: tokenizer_lib.Tokenizer
    special: ft.SpecialTokens
    specs: tuple[ft.TaskSpec, ...]
    seq_len: int

    @property
    def n_seqs(self) -> int:
        return max(s.n_seqs for s in self.specs)

    def encode(self, task: int, ex: ft.Example, weight: float = 1.0) -> dict[str, np.ndarray]:
        spec = self.specs[task]
        task_token = self.special.task[task] if self.special.task else None
        seqs = ft.transform(ex, spec.kind, self.tokenizer, self.special, self.seq_len, task_token)
        filler = [self.special.start, self.special.extract]
        out = ft.pad_example(seqs, ex.label, task, self.n_seqs, self.seq_len, self.tokenizer.pad_id, filler)
        out["weight"] *= weight
        return out


class _Encode(grain.transforms.Map):
    def __init__(self, encoding: Encoding):
        self.encoding = encoding

    def map(self, item):
        task, ex, weight = item
        return self.encoding.encode(task, ex, weight)


def train_dataset(items, encoding: Encoding, batch_size: int, seed: int) -> grain.IterDataset:
    """Shuffled (reshuffled each epoch), repeated batches of this process's share of (task, example) items."""
    n_proc = jax.process_count()
    if batch_size % n_proc:
        raise ValueError(f"batch size {batch_size} does not split over {n_proc} processes")
    ds = grain.MapDataset.source([(t, ex, 1.0) for t, ex in items])[jax.process_index() :: n_proc]
    ds = ds.shuffle(seed=seed).repeat().map(_Encode(encoding)).to_iter_dataset()
    return ds.batch(batch_size // n_proc, drop_remainder=True)


def eval_dataset(items, encoding: Encoding, batch_size: int) -> grain.IterDataset:
    """Every item once, in order; the last batch is filled with weight-0 copies so shapes stay fixed."""
    n_proc = jax.process_count()
    rows = [(t, ex, 1.0) for t, ex in items]
    rows += [(*rows[0][:2], 0.0)] * (-len(rows) % batch_size)
    # Contiguous per-process blocks of each global batch keep rows in order across processes.
    local = batch_size // n_proc
    first = jax.process_index() * local
    mine = [rows[b + first + i] for b in range(0, len(rows), batch_size) for i in range(local)]
    ds = grain.MapDataset.source(mine).map(_Encode(encoding)).to_iter_dataset()
    return ds.batch(local, drop_remainder=True)


def data_path(cfg: ml_collections.ConfigDict, rel: str) -> str:
    root = cfg.finetune.data_dir
    root = root if os.path.isabs(root) else os.path.join(REPO, root)
    return os.path.normpath(os.path.join(root, rel))


def read_task(cfg: ml_collections.ConfigDict, spec: ft.TaskSpec) -> tuple[list, list, dict[str, Any]]:
    """(train examples, dev examples, report) of one task; tasks without a dev file are split with a fixed seed."""
    f = cfg.finetune
    train = spec.reader(data_path(cfg, spec.train))
    report = {"train_file": train.path, "malformed": {train.path: train.malformed}}
    if spec.dev is None:
        train_ex, dev_ex = ft.split(train.examples, f.eval_fraction, cfg.data.seed)
        report["dev_file"] = f"{train.path} (held-out {f.eval_fraction:.0%}, seed {cfg.data.seed})"
    else:
        dev = spec.reader(data_path(cfg, spec.dev))
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


def resolve_tokenizer(cfg: ml_collections.ConfigDict, workdir: str) -> tokenizer_lib.Tokenizer:
    """config.data.tokenizer, else the pretrained workdir's tokenizer.model, else WORKDIR's (trained if missing)."""
    from gptx.train import pretrain

    if cfg.data.tokenizer:
        return tokenizer_lib.Tokenizer.load(cfg.data.tokenizer)
    if cfg.finetune.init_from:
        path = os.path.join(cfg.finetune.init_from, "tokenizer.model")
        if os.path.exists(path):
            return tokenizer_lib.Tokenizer.load(path)
    return pretrain.load_tokenizer(cfg, workdir)


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


def make_trainer(cfg, encoding: Encoding, train_items, dev_items, steps: int, pretrained=None):
    """(Trainer, model) of a fine-tuning run of `steps` optimizer steps."""
    heads = tuple(TaskHead(s.name, s.kind, s.n_outputs) for s in encoding.specs)
    model = make_model(cfg, heads)
    schedule = lr_schedule(cfg.train, steps, cfg.finetune.warmup_fraction)
    tx = make_optimizer(cfg.train, schedule)
    b = cfg.train.batch_size
    tokens = b * encoding.n_seqs * encoding.seq_len
    trainer = loop.Trainer(
        init_fn=make_init_fn(model, tx, encoding.n_seqs, encoding.seq_len, pretrained),
        train_step=make_train_step(model, cfg.finetune.aux_lm_coef, schedule),
        train_data=train_dataset(train_items, encoding, b, cfg.data.seed),
        eval_step=make_eval_step(model),
        eval_data=(lambda: eval_dataset(dev_items, encoding, b)) if dev_items else None,
        flops_per_step=flops_lib.flops_per_token(model.cfg, encoding.seq_len) * tokens,
        tokens_per_step=tokens,
    )
    return trainer, model


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
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    tok = resolve_tokenizer(cfg, workdir)
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
    with mesh_lib.activation_rules(mesh):
        pretrained = load_pretrained_params(f.init_from, mesh) if f.init_from else None
    trainer, model = make_trainer(run_cfg, encoding, train_items, dev_items, run_cfg.train.steps, pretrained)
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
    logs.write_json(os.path.join(workdir, RESULTS), out)
    if jax.process_index() == 0:
        for name, r in out["tasks"].items():
            print(f"{name}: dev accuracy {r['accuracy']:.4f} on {r['examples']} examples ({r['dev_file']})")
    return out
