"""PPO-ptx against the reward model (InstructGPT, Sec. 3.5; Ziegler et al., 2019): the `ppo` command.

One iteration:
  rollout     the policy samples a response to each of B left-padded prompts with the KV-cache decoder at
              `temperature` (gptx/sample.py `decode`);
  score       one jitted pass recomputes the policy's and the frozen reference's log-probs of the sampled
              tokens from the same temperature-scaled distribution (positions from the mask, so left padding
              changes nothing), the value model's values and the reward model's score at the last real token,
              and turns them into per-token rewards

                  r_t = -β (log π(y_t) - log π_ref(y_t))          for each response token t
                  r_T += gain · RM(x, y) + bias                   at the last real token (EOS, or the last
                                                                   token of a response cut at the length limit)

              then GAE (γ = 1, λ = 0.95) advantages, returns = advantages + values, whitened advantages;
  update      several epochs of shuffled minibatches, each one step of the clipped PPO objective (ε = 0.2) for
              the policy and the clipped value loss for the value model; PPO-ptx adds γ_ptx times the LM loss of
              a pretraining batch to the policy's loss (InstructGPT eq. 2); dropout is off throughout;
  controller  β adapts to the measured KL: β ← β (1 + clip(KL/target - 1, -0.2, 0.2) · B / horizon)
              (Ziegler et al.), or stays fixed.

Tokens after a response's first EOS are masked out of every loss and statistic. A response that never emits
EOS is truncated at max_response_len and, optionally, penalised (rlhf.missing_eos_penalty).

The four models share the one mesh: the policy (from SFT) and the value model (from the RM) are trained
TrainStates, the reference (SFT) and the reward model are frozen params; all shardings come from gptx/mesh.py.
Checkpoints (policy, value, β and the pretraining-data position) and metrics use the training loop's module.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx import sample
from gptx.data import loader, sources
from gptx.models import GPT, GPTConfig
from gptx.rlhf import common, data, labeler, reward, sft
from gptx.rlhf.objective import gae, kl_rewards, policy_loss, update_kl_coef, value_loss, whiten
from gptx.train import finetune, lm, logs, loop
from gptx.train.state import TrainState, make_optimizer

RESULTS = "ppo_results.json"


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """The static hyper-parameters of the jitted functions (a hashable copy of config.rlhf)."""

    response_len: int = 32
    temperature: float = 0.7
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    whiten_advantages: bool = True
    ptx_coef: float = 0.0
    ppo_epochs: int = 4
    n_minibatches: int = 4
    missing_eos_penalty: float = 0.0
    eos_id: int = 2
    adaptive_kl: bool = True
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    rollout_batch: int = 16

    @classmethod
    def from_config(cls, r: ml_collections.ConfigDict, eos_id: int) -> PPOConfig:
        return cls(
            response_len=r.max_response_len,
            temperature=r.temperature,
            gamma=r.gamma,
            lam=r.lam,
            cliprange=r.cliprange,
            cliprange_value=r.cliprange_value,
            whiten_advantages=r.whiten_advantages,
            ptx_coef=r.ptx_coef,
            ppo_epochs=r.ppo_epochs,
            n_minibatches=r.rollout_batch // r.minibatch,
            missing_eos_penalty=r.missing_eos_penalty,
            eos_id=eos_id,
            adaptive_kl=r.adaptive_kl,
            kl_target=r.kl_target,
            kl_horizon=float(r.kl_horizon),
            rollout_batch=r.rollout_batch,
        )


class PPOState(struct.PyTreeNode):
    """Everything PPO trains or adapts: policy and value TrainStates, the KL coefficient β, the iteration."""

    policy: TrainState
    value: TrainState
    kl_coef: jax.Array
    iteration: jax.Array


@dataclasses.dataclass(frozen=True)
class Models:
    """The two networks of the four models: the policy/reference GPT and the value/reward RewardModel."""

    policy: GPT
    value: reward.RewardModel


# ------------------------------------------------------------------------------------------------------------
# Forward passes over prompt + response


def full_sequence(prompt: jax.Array, prompt_mask: jax.Array, response: jax.Array):
    """(tokens [B, P + N], mask, positions): the left-padded prompt and the response; every response token is
    attended to (those after EOS come after everything that counts), padding is not, positions skip it."""
    tokens = jnp.concatenate([prompt, response], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(bool), jnp.ones(response.shape, bool)], axis=1)
    return tokens, mask, sample.positions_from_mask(mask)


def response_logprobs(model: GPT, params, tokens, mask, positions, n: int, temperature: float):
    """(log π(y_t), entropy) [B, N] of the last n tokens at `temperature` (logits at positions P-1 .. P+N-2)."""
    logits = model.apply({"params": params}, tokens, positions, mask.astype(jnp.int32))
    return common.token_logprobs(logits[:, -n - 1 : -1], tokens[:, -n:], temperature)


def response_values(model: reward.RewardModel, params, tokens, mask, positions, n: int) -> jax.Array:
    """V(s_t) [B, N]: the value head before each response token is emitted (same positions as the logits)."""
    out = model.apply({"params": params}, tokens, positions, mask.astype(jnp.int32))
    return out[:, -n - 1 : -1]


def make_score_fn(models: Models, hp: PPOConfig):
    """Pure `(state, frozen, prompt, prompt_mask, response, response_mask) -> (rollout, metrics)`.

    frozen: {"ref": reference GPT params, "reward": RM params, "gain", "bias"}. The rollout dict holds every
    [B, ...] array the update needs.
    """

    def score(state: PPOState, frozen, prompt, prompt_mask, response, response_mask):
        n = hp.response_len
        tokens, mask, positions = full_sequence(prompt, prompt_mask, response)
        rmask = response_mask.astype(bool)
        m = rmask.astype(jnp.float32)
        logp, entropy = response_logprobs(
            models.policy, state.policy.params, tokens, mask, positions, n, hp.temperature
        )
        ref_logp, _ = response_logprobs(models.policy, frozen["ref"], tokens, mask, positions, n, hp.temperature)
        values = response_values(models.value, state.value.params, tokens, mask, positions, n) * m
        rm_out = models.value.apply({"params": frozen["reward"]}, tokens, positions, mask.astype(jnp.int32))
        raw = common.gather_last(rm_out, jnp.concatenate([prompt_mask.astype(bool), rmask], axis=1))
        has_eos = jnp.any((response == hp.eos_id) & rmask, axis=1)
        normalised = frozen["gain"] * raw + frozen["bias"]
        score = normalised - hp.missing_eos_penalty * (~has_eos)
        rewards, kl = kl_rewards(score, logp * m, ref_logp * m, rmask, state.kl_coef)
        advantages, returns = gae(rewards, values, rmask, hp.gamma, hp.lam)
        if hp.whiten_advantages:
            advantages = whiten(advantages, rmask)
        rollout = {
            "tokens": tokens,
            "mask": mask,
            "positions": positions,
            "response_mask": rmask,
            "logprobs": logp * m,
            "values": values,
            "advantages": advantages,
            "returns": returns,
            "episode_score": normalised[:, None],  # [B, 1] for evaluation
            "episode_kl": jnp.sum(kl, axis=1, keepdims=True),
        }
        kl_per_episode = jnp.sum(kl, axis=1)
        metrics = {
            "score_raw": jnp.mean(raw),
            "score": jnp.mean(normalised),
            "kl": jnp.mean(kl_per_episode),
            "entropy": common.masked_mean(entropy, rmask),
            "response_length": jnp.mean(jnp.sum(m, axis=1)),
            "eos_fraction": jnp.mean(has_eos.astype(jnp.float32)),
            "non_score_reward": jnp.mean(jnp.sum(rewards, axis=1) - score),
            "kl_coef": state.kl_coef,
        }
        return rollout, metrics

    return score


# ------------------------------------------------------------------------------------------------------------
# The update


def ppo_losses(params: tuple[Any, Any], mb: dict[str, jax.Array], ptx_batch, models: Models, hp: PPOConfig):
    """(total loss, metrics) of one minibatch: policy loss + ptx_coef · LM loss of `ptx_batch` + value loss.

    params = (policy params, value params): disjoint trees, so one gradient updates both models, each with its
    own optimizer.
    """
    policy_params, value_params = params
    n = hp.response_len
    mask = mb["response_mask"]
    logp, entropy = response_logprobs(
        models.policy, policy_params, mb["tokens"], mb["mask"], mb["positions"], n, hp.temperature
    )
    pg, clipfrac, approx_kl = policy_loss(logp, mb["logprobs"], mb["advantages"], mask, hp.cliprange)
    values = response_values(models.value, value_params, mb["tokens"], mb["mask"], mb["positions"], n)
    vf, vf_clipfrac = value_loss(values, mb["values"], mb["returns"], mask, hp.cliprange_value)
    total = pg + vf
    metrics = {
        "pg_loss": pg,
        "vf_loss": vf,
        "clipfrac": clipfrac,
        "vf_clipfrac": vf_clipfrac,
        "approx_kl": approx_kl,
        "value_error": common.masked_mean((values - mb["returns"]) ** 2, mask),
        "ratio": common.masked_mean(jnp.exp(logp - mb["logprobs"]), mask),
        "policy_entropy": common.masked_mean(entropy, mask),
    }
    if ptx_batch is not None and hp.ptx_coef > 0:
        loss_sum, weight = lm.lm_loss_sum(policy_params, ptx_batch, None, models.policy, True)
        ptx = loss_sum / jnp.maximum(weight, 1.0)
        total = total + hp.ptx_coef * ptx
        metrics["ptx_loss"] = ptx
    return total, metrics


def _constrain_batch(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))


def make_update_fn(models: Models, hp: PPOConfig):
    """Pure `(state, rollout, ptx, rng, rollout_kl) -> (state, metrics)`: ppo_epochs passes over the rollout in
    n_minibatches shuffled minibatches (one lax.scan), then the KL controller's step with the rollout's mean
    per-episode KL. ptx holds one pretraining batch per minibatch ([epochs · minibatches, b, T]) or is None."""
    grad_fn = jax.value_and_grad(ppo_losses, has_aux=True)

    def update(state: PPOState, rollout, ptx, rng, rollout_kl):
        b = rollout["tokens"].shape[0]
        m = hp.n_minibatches
        keys = jax.random.split(rng, hp.ppo_epochs)
        order = jax.vmap(lambda k: jax.random.permutation(k, b).reshape(m, b // m))(keys)
        order = order.reshape(hp.ppo_epochs * m, b // m)  # [E*M, mb]

        def body(state: PPOState, xs):
            idx, ptx_batch = xs
            mb = jax.tree.map(lambda x: _constrain_batch(jnp.take(x, idx, axis=0)), rollout)
            (_, metrics), (g_pi, g_v) = grad_fn((state.policy.params, state.value.params), mb, ptx_batch, models, hp)
            metrics["policy_grad_norm"] = optax.global_norm(g_pi)
            state = state.replace(
                policy=state.policy.apply_gradients(grads=g_pi), value=state.value.apply_gradients(grads=g_v)
            )
            return state, metrics

        state, metrics = jax.lax.scan(body, state, (order, ptx))
        kl_coef = update_kl_coef(state.kl_coef, rollout_kl, b, hp.kl_target, hp.kl_horizon, hp.adaptive_kl)
        return state.replace(iteration=state.iteration + 1, kl_coef=kl_coef), jax.tree.map(jnp.mean, metrics)

    return update


# ------------------------------------------------------------------------------------------------------------
# Set-up on the mesh


def make_init_fn(models: Models, cfg: ml_collections.ConfigDict, sft_params, rm_params, seq_len: int):
    """rng -> PPOState with annotated params: the policy from SFT, the value model from the RM (random when
    either is None), β = rlhf.kl_coef. The policy follows config.train (lr, schedule over all PPO steps); the
    value model the same with lr = rlhf.value_lr."""
    r = cfg.rlhf
    t = cfg.train.copy_and_resolve_references()
    t.steps = max(1, r.iterations * r.ppo_epochs * (r.rollout_batch // r.minibatch))
    tv = t.copy_and_resolve_references()
    tv.lr = r.value_lr
    dummy = jnp.zeros((1, seq_len), jnp.int32)
    tx_policy, tx_value = make_optimizer(t), make_optimizer(tv)  # built once: the state's static metadata

    def init_fn(rng: jax.Array) -> PPOState:
        k_pi, k_v, k_grow = jax.random.split(rng, 3)
        pi = models.policy.init(k_pi, dummy)["params"]
        v = models.value.init(k_v, dummy)["params"]
        if sft_params is not None:
            pi = finetune.merge_pretrained(pi, sft_params, k_grow, models.policy.cfg.init_std)
        if rm_params is not None:
            v = finetune.merge_pretrained(v, rm_params, k_grow, models.policy.cfg.init_std)
        return PPOState(
            policy=TrainState.create(apply_fn=models.policy.apply, params=pi, tx=tx_policy),
            value=TrainState.create(apply_fn=models.value.apply, params=v, tx=tx_value),
            kl_coef=jnp.asarray(r.kl_coef, jnp.float32),
            iteration=jnp.asarray(0, jnp.int32),
        )

    return init_fn


def init_sharded(init_fn, mesh: Mesh, rng: jax.Array) -> PPOState:
    """A fresh PPOState placed on `mesh` with the shardings of its logical annotations."""
    shardings, _ = loop.abstract_state(init_fn, mesh, rng)
    return jax.jit(lambda k: nn.meta.unbox(init_fn(k)), out_shardings=shardings)(rng)


def make_frozen(models: Models, ref_params, rm_params, gain: float, bias: float, mesh: Mesh, seq_len: int):
    """The frozen half: reference GPT and reward model params sharded like the trained ones, gain and bias."""
    return {
        "ref": jax.device_put(ref_params, reward.param_shardings(models.policy, mesh, seq_len)),
        "reward": jax.device_put(rm_params, reward.param_shardings(models.value, mesh, seq_len)),
        "gain": jnp.asarray(gain, jnp.float32),
        "bias": jnp.asarray(bias, jnp.float32),
    }


@dataclasses.dataclass
class Steps:
    """The jitted phases of one iteration, compiled with shardings from the mesh."""

    score: Any
    update: Any


def compile_steps(models: Models, hp: PPOConfig, mesh: Mesh, state_shardings) -> Steps:
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = mesh_lib.batch_sharding(mesh)
    score = jax.jit(make_score_fn(models, hp), out_shardings=(batch, replicated))
    update = jax.jit(
        make_update_fn(models, hp),
        in_shardings=(state_shardings, batch, None, replicated, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    return Steps(score=score, update=update)


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
    tokens, mask = common._pad_to(tokens, mask, max_prompt_len, tok.pad_id)
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


def ppo_models(cfg: ml_collections.ConfigDict) -> Models:
    """Policy/reference GPT and value/reward model of config.model, dropout off (PPO's log-probs and values
    must be those of the deterministic networks, in rollouts and updates alike)."""
    model_cfg = cfg.model.copy_and_resolve_references()
    model_cfg.update(dropout=0.0, attn_dropout=0.0)
    gcfg = GPTConfig.from_config(model_cfg)
    return Models(policy=GPT(gcfg), value=reward.RewardModel(gcfg))


def response_arrays(ids: list[list[int]], n: int, pad_id: int) -> dict[str, np.ndarray]:
    """Sampled responses (cut after EOS) as [B, n] tokens and mask."""
    tokens = np.full((len(ids), n), pad_id, np.int32)
    mask = np.zeros((len(ids), n), bool)
    for i, r in enumerate(ids):
        tokens[i, : len(r)], mask[i, : len(r)] = r[:n], True
    return {"response": tokens, "response_mask": mask}


def iterate(
    cfg,
    workdir: str,
    mesh: Mesh,
    models: Models,
    hp: PPOConfig,
    state: PPOState,
    frozen,
    tok,
    stream: PromptStream,
    mngr,
    ptx_it,
) -> PPOState:
    """Runs the remaining iterations: rollout, score, update; logs every iteration, checkpoints every
    train.ckpt_every iterations and at the end."""
    from gptx import sample

    r, t = cfg.rlhf, cfg.train
    steps = compile_steps(models, hp, mesh, jax.tree.map(lambda x: x.sharding, state))
    sampling = sample.SamplingConfig(
        max_new_tokens=r.max_response_len, temperature=r.temperature, eos_id=tok.eos_id, pad_id=tok.pad_id
    )
    writer = logs.MetricWriter(workdir)
    base = jax.random.key(r.seed)
    n_mb = hp.ppo_epochs * hp.n_minibatches

    def save(step: int) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if ptx_it is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointSave(ptx_it)
        mngr.save(step, args=ocp.args.Composite(**items))

    try:
        for it in range(int(state.iteration), r.iterations):
            gen_key, update_key = jax.random.split(jax.random.fold_in(base, it))
            dev = common.put_rows(mesh, prompt_arrays(tok, stream.batch(it), r.max_prompt_len))
            t0 = time.perf_counter()
            out = sample.decode(
                models.policy, state.policy.params, dev["prompt"], dev["prompt_mask"], gen_key, sampling
            )
            jax.block_until_ready(out.tokens)
            t1 = time.perf_counter()
            rollout, metrics = steps.score(state, frozen, dev["prompt"], dev["prompt_mask"], out.tokens, out.mask)
            jax.block_until_ready(rollout)
            t2 = time.perf_counter()
            ptx = stack_ptx(mesh, ptx_it, n_mb) if ptx_it is not None else None
            state, update_metrics = steps.update(state, rollout, ptx, update_key, metrics["kl"])
            jax.block_until_ready(state)
            t3 = time.perf_counter()
            row = {k: float(v) for k, v in jax.device_get({**metrics, **update_metrics}).items()}
            if not np.isfinite(row["pg_loss"]) or not np.isfinite(row["vf_loss"]):
                raise loop.NonFiniteLossError(
                    f"PPO loss is not finite at iteration {it}; the last good checkpoint "
                    f"(iteration {mngr.latest_step()}) is kept in {workdir}/checkpoints"
                )
            row.update(
                time_generation=t1 - t0,
                time_scoring=t2 - t1,
                time_update=t3 - t2,
                rollout_tokens_per_s=r.rollout_batch * row["response_length"] / max(t1 - t0, 1e-9),
            )
            writer.write(it + 1, row)
            if (it + 1) % t.log_every == 0 and jax.process_index() == 0:
                print(
                    f"ppo {it + 1}/{r.iterations}: score {row['score']:+.3f} kl {row['kl']:.3f} β {row['kl_coef']:.4f} "
                    f"entropy {row['entropy']:.3f} clipfrac {row['clipfrac']:.3f} length {row['response_length']:.1f}"
                    f" | gen {row['time_generation']:.2f}s score {row['time_scoring']:.2f}s "
                    f"update {row['time_update']:.2f}s",
                    flush=True,
                )
            if (it + 1) % t.ckpt_every == 0 or it + 1 == r.iterations:
                save(it + 1)
    finally:
        mngr.wait_until_finished()
        writer.close()
    return state


def run(cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None = None) -> dict[str, Any]:
    """`gptx.main ppo`: PPO(-ptx) of the SFT policy (rlhf.init_from) against the RM (rlhf.reward_from)."""
    data.validate(cfg)
    r = cfg.rlhf
    if not r.init_from or not r.reward_from:
        raise config_lib.ConfigError("ppo needs config.rlhf.init_from (SFT workdir) and config.rlhf.reward_from (RM)")
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    os.makedirs(workdir, exist_ok=True)
    tok = common.resolve_tokenizer(cfg, workdir)
    models = ppo_models(cfg)
    hp = PPOConfig.from_config(r, tok.eos_id)
    seq_len = r.max_prompt_len + r.max_response_len
    prompts, source = data.prompts(cfg)
    train_p, test_p = data.split_by_prompt(prompts, r.test_fraction, r.seed)
    logging.info("%s: %d training / %d held-out prompts", source, len(train_p), len(test_p))

    sft_params = sft.load_init(cfg, mesh)
    rm = reward.load_reward(r.reward_from, cfg, mesh)
    init_fn = make_init_fn(models, cfg, sft_params, rm.params, seq_len)
    ptx_ds = ptx_dataset(cfg, tok, train=True) if r.ptx_coef > 0 else None
    ptx_it = iter(ptx_ds) if ptx_ds is not None else None
    mngr = loop.checkpoint_manager(workdir, cfg.train.keep_ckpts, cfg.train.async_ckpt)
    trainer = loop.Trainer(init_fn=init_fn, train_step=None, train_data=ptx_ds)
    with mesh_lib.activation_rules(mesh):
        state = loop.restore_or_init(trainer, mngr, mesh, jax.random.key(cfg.train.seed), ptx_it)
        frozen = make_frozen(models, sft_params, rm.params, rm.gain, rm.bias, mesh, seq_len)
        stream = PromptStream(train_p, r.rollout_batch, r.seed)
        state = iterate(cfg, workdir, mesh, models, hp, state, frozen, tok, stream, mngr, ptx_it)
        results = evaluate(cfg, mesh, models, hp, state, frozen, tok, test_p[: r.eval_prompts])
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


def sample_and_score(cfg, mesh, models, hp, state, frozen, tok, prompts, params, seed: int):
    """(response ids, texts, normalised RM scores [n], per-episode KL(π || π_ref) [n]) of one sample of
    `params` per prompt; the KL is of the current policy `state`."""
    r = cfg.rlhf
    ids, texts = common.sample_responses(
        models.policy,
        params,
        tok,
        prompts,
        max_prompt_len=r.max_prompt_len,
        max_response_len=r.max_response_len,
        temperature=r.temperature,
        seed=seed,
        batch_size=r.rollout_batch,
        mesh=mesh,
    )
    score = jax.jit(make_score_fn(models, hp))
    scores, kls = [], []
    for start in range(0, len(prompts), r.rollout_batch):
        chunk_p = prompts[start : start + r.rollout_batch]
        chunk_ids = ids[start : start + r.rollout_batch]
        pad = r.rollout_batch - len(chunk_p)
        arrays = {
            **prompt_arrays(tok, chunk_p + [chunk_p[0]] * pad, r.max_prompt_len),
            **response_arrays(chunk_ids + [chunk_ids[0]] * pad, r.max_response_len, tok.pad_id),
        }
        dev = common.put_rows(mesh, arrays)
        rollout, _ = score(state, frozen, dev["prompt"], dev["prompt_mask"], dev["response"], dev["response_mask"])
        scores.append(common.to_host(rollout["episode_score"])[: len(chunk_p), 0])
        kls.append(common.to_host(rollout["episode_kl"])[: len(chunk_p), 0])
    return ids, texts, np.concatenate(scores), np.concatenate(kls)


def pretrain_loss(cfg, models: Models, params, tok, mesh: Mesh, batches: int = 8) -> float:
    """Mean next-token loss of `params` on the validation split of config.data.corpus (PPO-ptx's target)."""
    step = jax.jit(lm.make_eval_step(models.policy))
    total = weight = 0.0
    for i, batch in enumerate(ptx_dataset(cfg, tok, train=False)):
        if i >= batches:
            break
        loss, w = jax.device_get(step(params, mesh_lib.put_batch(mesh, batch)))
        total, weight = total + float(loss), weight + float(w)
    return total / max(weight, 1.0)


def evaluate(cfg, mesh: Mesh, models: Models, hp: PPOConfig, state: PPOState, frozen, tok, prompts) -> dict:
    """Held-out prompts: RM score of PPO and SFT samples, KL(PPO || SFT) on PPO samples, the labeler's score
    and win rate of PPO over SFT (when comparisons come from a labeler), and the pretraining loss of both."""
    r = cfg.rlhf
    if not prompts:
        return {"eval_prompts": 0}
    _, ppo_texts, ppo_scores, ppo_kl = sample_and_score(
        cfg, mesh, models, hp, state, frozen, tok, prompts, state.policy.params, r.seed + 7
    )
    _, sft_texts, sft_scores, _ = sample_and_score(
        cfg, mesh, models, hp, state, frozen, tok, prompts, frozen["ref"], r.seed + 7
    )
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
            "ppo": pretrain_loss(cfg, models, state.policy.params, tok, mesh),
            "sft": pretrain_loss(cfg, models, frozen["ref"], tok, mesh),
            "ptx_coef": r.ptx_coef,
        }
    except (FileNotFoundError, sources.DataError) as e:  # no corpus to measure on: report the rest
        logging.warning("pretraining loss not measured: %s", e)
    return out
