"""GPT language-model pretraining: the `train` command assembled from data, model, optimizer and loop."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import Mesh

from gptx import config as config_lib
from gptx import flops as flops_lib
from gptx import fs
from gptx import mesh as mesh_lib
from gptx.data import loader, sources
from gptx.data import tokenizer as tokenizer_lib
from gptx.models import GPT, GPTConfig
from gptx.train import checkpoints, integrity, lm, loop
from gptx.train import step as step_lib
from gptx.train.state import TrainState, lr_schedule, make_optimizer

# Where a workdir keeps a tokenizer of each config.tokenizer.kind.
FILES = {"sentencepiece": "tokenizer.model", "bpe": "tokenizer.json"}


def tokenizer_path(cfg: ml_collections.ConfigDict, workdir: str) -> str:
    """config.data.tokenizer, else the tokenizer the workdir holds, else where config.tokenizer.kind's is saved."""
    if cfg.data.tokenizer:
        return cfg.data.tokenizer
    own = FILES[cfg.tokenizer.kind]
    return tokenizer_lib.find(workdir) or fs.join(workdir, own)


def train_tokenizer(cfg: ml_collections.ConfigDict, workdir: str) -> tokenizer_lib.Tokenizer:
    """Trains config.tokenizer (SentencePiece or byte-level BPE) on the training split of the corpus; saves it in
    the workdir (or at config.data.tokenizer when that names a file)."""
    docs, _ = loader.split_train_val(
        sources.read_documents(cfg.data.corpus, cfg.data.doc_separator), cfg.data.val_fraction
    )
    t = cfg.tokenizer
    if jax.process_index() == 0:  # a silent phase of seconds to minutes: say what runs
        print(f"training a {t.vocab_size}-token {t.kind} tokenizer on {len(docs):,} documents", file=sys.stderr)
    tok = tokenizer_lib.train_from_config(docs, t)
    path = cfg.data.tokenizer or fs.join(workdir, FILES[t.kind])
    fs.makedirs(fs.dirname(fs.absolute(path)))
    if jax.process_index() == 0:
        tok.save(path)
    logging.info("trained a %d-token %s tokenizer -> %s", tok.vocab_size, t.kind, path)
    return tok


def load_tokenizer(cfg: ml_collections.ConfigDict, workdir: str) -> tokenizer_lib.Tokenizer:
    """The configured tokenizer; the workdir's own is trained when missing."""
    path = tokenizer_path(cfg, workdir)
    if not cfg.data.tokenizer and not fs.exists(path):
        return train_tokenizer(cfg, workdir)
    return tokenizer_lib.load(path)


def resolve_tokenizer(
    cfg: ml_collections.ConfigDict, workdir: str, init_runs: Sequence[str] = ()
) -> tokenizer_lib.Tokenizer:
    """The tokenizer of a run that starts from other runs (fine-tuning, SFT, RM, PPO, vision): config.data.tokenizer,
    else the tokenizer of the first of `init_runs` (workdirs) that has one, else WORKDIR's own (trained on
    config.data.corpus when missing). The one used is saved into WORKDIR, so a run that starts from this one,
    and `sample`/`eval` on it, find it there."""
    found = (tokenizer_lib.find(r) for r in init_runs if r and fs.isdir(r))
    src = cfg.data.tokenizer or next((f for f in found if f), "")
    if not src:
        return load_tokenizer(cfg, workdir)
    tok = tokenizer_lib.load(src)
    fs.makedirs(workdir)
    if jax.process_index() == 0 and tokenizer_lib.find(workdir) is None:
        tok.save(fs.join(workdir, FILES[tok.kind]))
    return tok


def make_model(cfg: ml_collections.ConfigDict) -> tuple[GPT, Callable[[jax.Array], TrainState]]:
    """The GPT of config.model and an init function for its TrainState (params logically annotated)."""
    model = GPT(GPTConfig.from_config(cfg.model))
    tx = make_optimizer(cfg.train)
    seq_len = config_lib.seq_len(cfg)

    def init_fn(rng: jax.Array) -> TrainState:
        params = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    return model, init_fn


def make_trainer(
    cfg: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer, train_docs: list[str], val_docs: list[str]
) -> loop.Trainer:
    """The LM Trainer: GPT + AdamW, packed grain batches of train_docs, eval on val_docs."""
    if tok.vocab_size > cfg.model.vocab_size:
        raise config_lib.ConfigError(
            f"config.model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tok.vocab_size} pieces"
        )
    model, init_fn = make_model(cfg)
    seq_len = config_lib.seq_len(cfg)
    t = cfg.train

    def data(docs: list[str], train: bool):
        return loader.lm_dataset(
            docs,
            tok,
            seq_len=seq_len,
            batch_size=t.batch_size,
            seed=cfg.data.seed,
            train=train,
            worker_count=cfg.data.worker_count if train else 0,
        )

    tokens = t.batch_size * seq_len
    return loop.Trainer(
        init_fn=init_fn,
        train_step=step_lib.make_train_step(lm.loss(model), grad_accum=t.grad_accum, lr_fn=lr_schedule(t)),
        train_data=data(train_docs, True),
        eval_step=lm.make_eval_step(model),
        eval_data=(lambda: data(val_docs, False)) if val_docs else None,
        flops_per_step=flops_lib.flops_per_token(model.cfg, seq_len) * tokens,
        tokens_per_step=tokens,
    )


def run(cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None = None) -> loop.LoopResult:
    """`gptx.main train`: pretrains a GPT on config.data.corpus, checkpointing into workdir."""
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    if checkpoints.latest_step(workdir) is not None and not checkpoints.has_data_position(workdir):
        cfg = integrity.with_model_of(cfg, workdir)  # converted weights: train the model they are
    tok = load_tokenizer(cfg, workdir)
    docs = sources.read_documents(cfg.data.corpus, cfg.data.doc_separator)
    train_docs, val_docs = loader.split_train_val(docs, cfg.data.val_fraction)
    logging.info("%d training and %d validation documents", len(train_docs), len(val_docs))
    trainer = make_trainer(cfg, tok, train_docs, val_docs)
    return loop.train(trainer, cfg, workdir, mesh)


def load_trained(cfg: ml_collections.ConfigDict, workdir: str) -> tuple[GPT, dict, tokenizer_lib.Tokenizer]:
    """(model, params, tokenizer) from the latest checkpoint of a `train` or `convert` run in workdir; the model
    shape comes from the run's own config.json when it has one."""
    cfg = integrity.with_model_of(cfg, workdir)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    model, _ = make_model(cfg)
    target = checkpoints.abstract_params(model, jnp.zeros((1, config_lib.seq_len(cfg)), jnp.int32))
    with mesh_lib.activation_rules(mesh):
        params, _ = checkpoints.restore_params(workdir, mesh, target)
    return model, params, tokenizer_lib.load(tokenizer_path(cfg, workdir))
