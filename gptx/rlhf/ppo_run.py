"""The `ppo` command: PPO-ptx of the SFT policy against the reward model, run by the one training loop.

Each loop step is one PPO iteration (gptx/rlhf/ppo.py): rollout of a batch of training prompts, scoring, and
the minibatch updates. The loop checkpoints it (policy, value model, β, the iteration and the pretraining-data
position), logs it every iteration, stops it cleanly on SIGTERM or a non-finite loss and shows its progress,
exactly as it does for every other trainer; a resumed run sees the prompts, samples and ptx batches it would
have seen. After the last iteration, held-out prompts compare PPO's samples with SFT's.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx import sample
from gptx.data import loader, sources
from gptx.models import GPT
from gptx.rlhf import common, data, labeler, reward, sizes
from gptx.rlhf.ppo import (
    Models,
    PPOConfig,
    PPOState,
    compile_steps,
    make_frozen,
    make_init_fn,
    ppo_models,
)
from gptx.train import integrity, lm, logs, loop

RESULTS = "ppo_results.json"


# ------------------------------------------------------------------------------------------------------------
# Data


class PromptStream:
    """The training prompts in a fresh seeded order each epoch; batch i is a pure function of i, so a resumed
    run continues with the prompts it would have seen."""

    def __init__(self, prompts: list[str], batch_size: int, seed: int):
        if not prompts:
            raise ValueError("no training prompts")
        self.prompts, self.batch_size, self.seed = prompts, batch_size, seed

    def batch(self, i: int) -> list[str]:
        n = len(self.prompts)
        out = []
        for j in range(i * self.batch_size, (i + 1) * self.batch_size):
            epoch, k = divmod(j, n)
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            out.append(self.prompts[order[k]])
        return out


def prompt_arrays(tok, prompts: list[str], max_prompt_len: int) -> dict[str, np.ndarray]:
    """Left-padded [B, max_prompt_len] prompt tokens and mask."""
    tokens, mask = sample.left_pad([data.encode_prompt(tok, p, max_prompt_len) for p in prompts], tok.pad_id)
    tokens, mask = common.pad_to(tokens, mask, max_prompt_len, tok.pad_id)
    return {"prompt": tokens.astype(np.int32), "prompt_mask": mask.astype(bool)}


def ptx_dataset(cfg: ml_collections.ConfigDict, tok, train: bool):
    """Packed pretraining batches of config.data.corpus (train: its training split, repeated; else validation)."""
    docs = sources.read_documents(cfg.data.corpus, cfg.data.doc_separator)
    train_docs, val_docs = loader.split_train_val(docs, cfg.data.val_fraction)
    return loader.lm_dataset(
        train_docs if train or not val_docs else val_docs,
        tok,
        seq_len=config_lib.seq_len(cfg),
        batch_size=cfg.rlhf.ptx_batch,
        seed=cfg.data.seed,
        train=train,
    )


def stack_ptx(mesh: Mesh, it, n: int) -> dict[str, jax.Array]:
    """n pretraining batches stacked as [n, b, T], the b dimension sharded like any batch."""
    local = [next(it) for _ in range(n)]
    stacked = {k: np.stack([b[k] for b in local]) for k in local[0]}
    sharding = mesh_lib.logical_sharding(mesh, (None, "batch", "length"))
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (n, v.shape[1] * jax.process_count(), *v.shape[2:]))
        for k, v in stacked.items()
    }


# ------------------------------------------------------------------------------------------------------------
# The command


def response_arrays(ids: list[list[int]], n: int, pad_id: int) -> dict[str, np.ndarray]:
    """Sampled responses (cut after EOS) as [B, n] tokens and mask."""
    tokens = np.full((len(ids), n), pad_id, np.int32)
    mask = np.zeros((len(ids), n), bool)
    for i, r in enumerate(ids):
        tokens[i, : len(r)], mask[i, : len(r)] = r[:n], True
    return {"response": tokens, "response_mask": mask}


@dataclasses.dataclass
class Iteration:
    """One PPO iteration as the training loop's step: rollout -> score -> update (`loop.Trainer.iteration`).

    Iteration i samples the prompts, sampling keys and shuffles of i alone, so a resumed run repeats exactly what
    an uninterrupted one does; the ptx batches come from the loop's data iterator, whose position the loop saves.
    """

    models: Models
    hp: PPOConfig
    frozen: dict[str, Any]
    tok: Any
    stream: PromptStream
    mesh: Mesh
    rlhf: ml_collections.ConfigDict
    steps: Any = None  # the jitted phases, compiled for the state's shardings at the first call

    def compiled(self, state: PPOState):
        """The jitted score and update phases for `state`'s shardings (compiled once)."""
        if self.steps is None:
            self.steps = compile_steps(self.models, self.hp, self.mesh, jax.tree.map(lambda x: x.sharding, state))
        return self.steps

    def __call__(self, state: PPOState, it: int, ptx_it) -> tuple[PPOState, dict[str, float]]:
        r, hp = self.rlhf, self.hp
        steps = self.compiled(state)
        sampling = sample.SamplingConfig(
            max_new_tokens=r.max_response_len, temperature=r.temperature, eos_id=self.tok.eos_id, pad_id=self.tok.pad_id
        )
        gen_key, update_key = jax.random.split(jax.random.fold_in(jax.random.key(r.seed), it))
        dev = common.put_rows(self.mesh, prompt_arrays(self.tok, self.stream.batch(it), r.max_prompt_len))
        t0 = time.perf_counter()
        out = sample.decode(
            self.models.policy, state.policy.params, dev["prompt"], dev["prompt_mask"], gen_key, sampling
        )
        jax.block_until_ready(out.tokens)
        t1 = time.perf_counter()
        rollout, metrics = steps.score(state, self.frozen, dev["prompt"], dev["prompt_mask"], out.tokens, out.mask)
        jax.block_until_ready(rollout)
        t2 = time.perf_counter()
        ptx = stack_ptx(self.mesh, ptx_it, hp.ppo_epochs * hp.n_minibatches) if ptx_it is not None else None
        state, update_metrics = steps.update(state, rollout, ptx, update_key, metrics["kl"])
        jax.block_until_ready(state)
        t3 = time.perf_counter()
        row = {k: float(v) for k, v in jax.device_get({**metrics, **update_metrics}).items()}
        row.update(
            time_generation=t1 - t0,
            time_scoring=t2 - t1,
            time_update=t3 - t2,
            rollout_tokens_per_s=r.rollout_batch * row["response_length"] / max(t1 - t0, 1e-9),
        )
        return state, row


def make_trainer(
    cfg, models: Models, hp: PPOConfig, tok, *, train_prompts: list[str], sft_params, rm, mesh: Mesh
) -> loop.Trainer:
    """The PPO Trainer: the policy from SFT, the value model from the RM (gain and bias folded in), one iteration
    per loop step. sft_params become the frozen reference; the trained policy is the init's copy of them."""
    r = cfg.rlhf
    seq_len = r.max_prompt_len + r.max_response_len
    with mesh_lib.activation_rules(mesh):
        frozen = make_frozen(models, sft_params, rm.params, rm.gain, rm.bias, mesh, seq_len)
    iteration = Iteration(models, hp, frozen, tok, PromptStream(train_prompts, r.rollout_batch, r.seed), mesh, r)
    return loop.Trainer(
        init_fn=make_init_fn(models, cfg, frozen["ref"], frozen["reward"], seq_len, rm.gain, rm.bias),
        iteration=iteration,
        train_data=ptx_dataset(cfg, tok, train=True) if r.ptx_coef > 0 else None,
        tokens_per_step=r.rollout_batch * r.max_response_len,
        progress_keys=("score", "kl", "kl_coef"),
    )


def run(cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None = None) -> dict[str, Any]:
    """`gptx.main ppo`: PPO(-ptx) of the SFT policy (rlhf.init_from) against the RM (rlhf.reward_from)."""
    data.validate(cfg, "ppo")
    r = cfg.rlhf
    if not r.init_from or not r.reward_from:
        raise config_lib.ConfigError("ppo needs config.rlhf.init_from (SFT workdir) and config.rlhf.reward_from (RM)")
    cfg = integrity.with_model_of(cfg, r.init_from, grow_vocab=True)
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    tok = common.resolve_tokenizer(cfg, workdir)
    models = ppo_models(cfg)
    if models.value.cfg.n_head % mesh.shape["tensor"]:
        raise config_lib.ConfigError(
            f"the reward model's {models.value.cfg.n_head} heads do not split over config.mesh.tensor="
            f"{mesh.shape['tensor']}"
        )
    logging.info("policy %s, reward and value model %s", sizes.describe(cfg.model), sizes.describe(models.value.cfg))
    hp = PPOConfig.from_config(r, tok.eos_id)
    prompts, source = data.prompts(cfg)
    train_p, test_p = data.split_by_prompt(prompts, r.test_fraction, r.seed)
    logging.info("%s: %d training / %d held-out prompts", source, len(train_p), len(test_p))

    # Restored straight into their shardings; the reference is this copy, grown only if SFT's vocabulary is smaller.
    seq_len = r.max_prompt_len + r.max_response_len
    sft_params = common.grow_to(models.policy, common.load_init(cfg, mesh, models.policy), mesh, seq_len, r.seed)
    rm = reward.load_reward(r.reward_from, cfg, mesh, models.value)
    trainer = make_trainer(cfg, models, hp, tok, train_prompts=train_p, sft_params=sft_params, rm=rm, mesh=mesh)
    run_cfg = cfg.copy_and_resolve_references()
    run_cfg.train.update(steps=r.iterations, log_every=1)  # a loop step is one iteration; each is logged
    result = loop.train(trainer, run_cfg, workdir, mesh)
    state = result.state
    with mesh_lib.activation_rules(mesh):
        results = evaluate(cfg, trainer.iteration, state, test_p[: r.eval_prompts])
    results.update(prompts=source, train_prompts=len(train_p), iterations=int(state.iteration))
    logs.write_json(os.path.join(workdir, RESULTS), results)
    if jax.process_index() == 0:
        print(summary_line(results))
    return results


def summary_line(res: dict[str, Any]) -> str:
    line = (
        f"ppo: RM score {res['sft']['score']:+.3f} (SFT) -> {res['ppo']['score']:+.3f} (PPO) on "
        f"{res['eval_prompts']} held-out prompts, KL(PPO || SFT) {res['ppo']['kl']:.3f} nats"
    )
    if "labeler" in res:
        lab = res["labeler"]
        line += f"; {lab['name']}: {lab['sft']:+.3f} -> {lab['ppo']:+.3f}, win rate {lab['win_rate']:.3f}"
    if "pretrain_loss" in res:
        p = res["pretrain_loss"]
        line += f"; pretraining loss {p['sft']:.3f} -> {p['ppo']:.3f}"
    return line


def sample_and_score(it: Iteration, state: PPOState, prompts: list[str], params, seed: int):
    """(response ids, texts, normalised RM scores [n], per-episode KL(π || π_ref) [n]) of one sample of
    `params` per prompt; the KL is of the current policy `state`."""
    r, tok = it.rlhf, it.tok
    ids, texts = common.sample_responses(
        it.models.policy,
        params,
        tok,
        prompts,
        r,
        seed=seed,
        mesh=it.mesh,
    )
    score = it.compiled(state).score
    scores, kls = [], []
    for start in range(0, len(prompts), r.rollout_batch):
        chunk_p = prompts[start : start + r.rollout_batch]
        chunk_ids = ids[start : start + r.rollout_batch]
        pad = r.rollout_batch - len(chunk_p)
        arrays = {
            **prompt_arrays(tok, chunk_p + [chunk_p[0]] * pad, r.max_prompt_len),
            **response_arrays(chunk_ids + [chunk_ids[0]] * pad, r.max_response_len, tok.pad_id),
        }
        dev = common.put_rows(it.mesh, arrays)
        rollout, _ = score(state, it.frozen, dev["prompt"], dev["prompt_mask"], dev["response"], dev["response_mask"])
        scores.append(common.to_host(rollout["episode_score"])[: len(chunk_p), 0])
        kls.append(common.to_host(rollout["episode_kl"])[: len(chunk_p), 0])
    return ids, texts, np.concatenate(scores), np.concatenate(kls)


def pretrain_loss(cfg, policy: GPT, params, tok, mesh: Mesh, batches: int = 8) -> float:
    """Mean next-token loss of `params` on the validation split of config.data.corpus (PPO-ptx's target)."""
    step = jax.jit(lm.make_eval_step(policy))
    total = weight = 0.0
    for i, batch in enumerate(ptx_dataset(cfg, tok, train=False)):
        if i >= batches:
            break
        loss, w = jax.device_get(step(params, mesh_lib.put_batch(mesh, batch)))
        total, weight = total + float(loss), weight + float(w)
    return total / max(weight, 1.0)


def evaluate(cfg, it: Iteration, state: PPOState, prompts: list[str]) -> dict:
    """Held-out prompts: RM score of PPO and SFT samples, KL(PPO || SFT) on PPO samples, the labeler's score
    and win rate of PPO over SFT (when comparisons come from a labeler), and the pretraining loss of both."""
    r = cfg.rlhf
    if not prompts:
        return {"eval_prompts": 0}
    ref = it.frozen["ref"]
    _, ppo_texts, ppo_scores, ppo_kl = sample_and_score(it, state, prompts, state.policy.params, r.seed + 7)
    _, sft_texts, sft_scores, _ = sample_and_score(it, state, prompts, ref, r.seed + 7)
    out = {
        "eval_prompts": len(prompts),
        "ppo": {"score": float(np.mean(ppo_scores)), "kl": float(np.mean(ppo_kl))},
        "sft": {"score": float(np.mean(sft_scores))},
        "rm_win_rate": labeler.win_rate(ppo_scores, sft_scores),
        "examples": [
            {"prompt": p, "sft": s, "ppo": q} for p, s, q in list(zip(prompts, sft_texts, ppo_texts, strict=True))[:8]
        ],
    }
    if r.comparisons == "labeler":
        judge = labeler.get(r.labeler)
        a, b = judge(ppo_texts), judge(sft_texts)
        out["labeler"] = {
            "name": r.labeler,
            "ppo": float(np.mean(a)),
            "sft": float(np.mean(b)),
            "win_rate": labeler.win_rate(a, b),
        }
    try:
        out["pretrain_loss"] = {
            "ppo": pretrain_loss(cfg, it.models.policy, state.policy.params, it.tok, it.mesh),
            "sft": pretrain_loss(cfg, it.models.policy, ref, it.tok, it.mesh),
            "ptx_coef": r.ptx_coef,
        }
    except (FileNotFoundError, sources.DataError) as e:  # no corpus to measure on: report the rest
        logging.warning("pretraining loss not measured: %s", e)
    return out
