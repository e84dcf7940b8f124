"""Supervised fine-tuning on demonstrations (InstructGPT, Sec. 3.5): the `sft` command.

The model is the pretrained GPT (config.rlhf.init_from) trained with the next-token loss on response tokens
only: the prompt is context, not a target (`data.sft_example` puts weight 1 exactly on the response's targets,
EOS included, and gptx/train/lm.py's step averages over weighted targets). The step and everything around it
(restore, logging, eval, checkpoints) is the one training loop's.

The paper's recipe is the default in configs/sft.py: 16 epochs, cosine learning-rate decay, residual dropout
0.2. The paper picks the SFT checkpoint by the reward model's score on a validation set, not by validation loss
(which overfits after one epoch while the RM score and human preference keep improving): with
config.rlhf.select_from = an RM workdir, every kept checkpoint samples responses to held-out prompts, the RM
scores them, and the best step is written to WORKDIR/selected_step.json, which later stages load.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from gptx import config as config_lib
from gptx import flops as flops_lib
from gptx import mesh as mesh_lib
from gptx.data import tokenizer as tokenizer_lib
from gptx.models import GPT, GPTConfig
from gptx.rlhf import common, data, reward
from gptx.train import checkpoints, integrity, lm, logs, loop
from gptx.train import step as step_lib
from gptx.train.state import TrainState, lr_schedule, make_optimizer

RESULTS = "sft_results.json"


def make_init_fn(model: GPT, tx, seq_len: int, pretrained: Any | None):
    """rng -> TrainState with annotated params; values from `pretrained` (a GPT params tree) when given."""

    def init_fn(rng: jax.Array) -> TrainState:
        init_rng, grow_rng = jax.random.split(rng)
        params = model.init(init_rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
        if pretrained is not None:
            params = checkpoints.merge_params(params, pretrained, grow_rng, model.cfg.init_std)
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    return init_fn


def make_trainer(
    cfg: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer, train_demos, val_demos, pretrained: Any | None = None
) -> tuple[loop.Trainer, GPT]:
    """The SFT Trainer over cfg.train.steps steps: GPT + AdamW with warmup and cosine decay, response-only loss."""
    model = GPT(GPTConfig.from_config(cfg.model))
    t, r = cfg.train, cfg.rlhf
    seq_len = config_lib.seq_len(cfg)

    def encode(demo, weight):
        out = data.sft_example(tok, demo, seq_len, r.max_prompt_len, r.max_response_len)
        out["weights"] *= weight
        return out

    tokens = t.batch_size * seq_len
    trainer = loop.Trainer(
        init_fn=make_init_fn(model, make_optimizer(t), seq_len, pretrained),
        train_step=step_lib.make_train_step(lm.loss(model), grad_accum=t.grad_accum, lr_fn=lr_schedule(t)),
        train_data=data.batches(train_demos, encode, t.batch_size, cfg.data.seed, train=True),
        eval_step=lm.make_eval_step(model),
        eval_data=(lambda: data.batches(val_demos, encode, t.batch_size, train=False)) if val_demos else None,
        flops_per_step=flops_lib.flops_per_token(model.cfg, seq_len) * tokens,
        tokens_per_step=tokens,
    )
    return trainer, model


def run(cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None = None) -> dict[str, Any]:
    """`gptx.main sft`: fine-tunes on the configured demonstrations; writes WORKDIR/sft_results.json."""
    data.validate(cfg, "sft")
    cfg = integrity.with_model_of(cfg, cfg.rlhf.init_from, grow_vocab=True)
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    tok = common.resolve_tokenizer(cfg, workdir)
    demos = data.demonstrations(cfg)
    train_demos, val_demos = data.split_by_prompt(demos.examples, cfg.rlhf.test_fraction, cfg.rlhf.seed)
    logging.info("%s: %d train / %d validation demonstrations", demos.path, len(train_demos), len(val_demos))
    run_cfg = cfg.copy_and_resolve_references()
    run_cfg.train.steps = common.steps_for(cfg, len(train_demos))
    pretrained = common.load_init(cfg, mesh, GPT(GPTConfig.from_config(cfg.model)))
    trainer, model = make_trainer(run_cfg, tok, train_demos, val_demos, pretrained)
    result = loop.train(trainer, run_cfg, workdir, mesh)
    history = [h for h in result.history if "eval_loss" in h]
    out = {
        "demonstrations": demos.path,
        "malformed": demos.malformed,
        "train_examples": len(train_demos),
        "val_examples": len(val_demos),
        "steps": int(result.state.step),
        "init_from": cfg.rlhf.init_from or "random",
        "final_train_loss": next((h["loss"] for h in reversed(result.history) if "loss" in h), None),
        "final_val_loss": history[-1]["eval_loss"] if history else None,
    }
    if cfg.rlhf.select_from:
        out["selection"] = select_by_reward(run_cfg, workdir, model, tok, val_demos, mesh)
    logs.write_json(os.path.join(workdir, RESULTS), out)
    if jax.process_index() == 0:
        print(
            f"sft: {out['steps']} steps on {len(train_demos)} demonstrations, validation loss "
            f"{out['final_val_loss'] or float('nan'):.4f} (response tokens only) -> {workdir}"
        )
    return out


def select_by_reward(cfg: ml_collections.ConfigDict, workdir: str, model: GPT, tok, val_demos, mesh: Mesh) -> dict:
    """Scores every kept checkpoint by the mean normalised reward of its samples on the validation prompts and
    records the best in WORKDIR/selected_step.json (later stages load that step)."""
    rm = reward.load_reward(cfg.rlhf.select_from, cfg, mesh)
    prompts = list(dict.fromkeys(d.prompt for d in val_demos))[: cfg.rlhf.eval_prompts]
    target = checkpoints.abstract_params(model, jnp.zeros((1, config_lib.seq_len(cfg)), jnp.int32))
    scores = {}
    selected = os.path.join(workdir, common.SELECTED)
    for step in checkpoints.all_steps(workdir):
        with mesh_lib.activation_rules(mesh):
            params, _ = checkpoints.restore_params(workdir, mesh, target, step=step)
            scores[step] = float(np.mean(rm.score_texts(model, params, tok, prompts, cfg, mesh)))
        logging.info("sft checkpoint %d: mean normalised reward %.4f", step, scores[step])
    best = max(scores, key=scores.get)
    logs.write_json(selected, {"step": best, "reward": scores[best], "scores": scores})
    return {"step": best, "scores": {str(k): v for k, v in scores.items()}}
