"""PPO-ptx against the reward model (InstructGPT, Sec. 3.5; Ziegler et al., 2019): the algorithm.

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

              optionally whitened to unit variance over the rollout (lm-human-preferences' whiten_rewards),
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
Policy and reference have the SFT model's shape, the reward and value models the reward model's own
(config.rlhf.reward_model, gptx/rlhf/sizes.py), as InstructGPT trained 1.3B-175B policies against a 6B RM. The
value model starts from the RM with its gain and bias folded into the head (`heads.fold_affine`), so its first
values are on the scale of the normalised rewards. Four copies of parameters exist: the two trained models and
the two frozen ones; the reference is the SFT checkpoint as restored, and the initial policy and value params are
built from the frozen ones inside one jitted init (never as constants of the program).
The command (prompts, the iteration plugged into the training loop, evaluation) is gptx/rlhf/ppo_run.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gptx import mesh as mesh_lib
from gptx import sample
from gptx.models import GPT, GPTConfig, vocab_tiling
from gptx.models.heads import RewardModel, fold_affine
from gptx.rlhf import common, reward, sizes
from gptx.rlhf.objective import gae, kl_rewards, policy_loss, update_kl_coef, value_loss, whiten
from gptx.train import checkpoints, lm
from gptx.train.state import TrainState, make_optimizer

RESULTS = "ppo_results.json"


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """The static hyper-parameters of the jitted functions: a hashable copy of config.rlhf, whose defaults are the
    only ones (gptx/config.py)."""

    response_len: int
    temperature: float
    gamma: float
    lam: float
    cliprange: float
    cliprange_value: float
    whiten_advantages: bool
    whiten_rewards: bool
    ptx_coef: float
    ppo_epochs: int
    n_minibatches: int
    missing_eos_penalty: float
    eos_id: int
    adaptive_kl: bool
    kl_target: float
    kl_horizon: float
    rollout_batch: int

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
            whiten_rewards=r.whiten_rewards,
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

    @property
    def step(self) -> jax.Array:
        """The training loop's step: PPO iterations done."""
        return self.iteration


@dataclasses.dataclass(frozen=True)
class Models:
    """The two networks of the four models: the policy/reference GPT and the value/reward RewardModel (each of
    its own shape)."""

    policy: GPT
    value: RewardModel


# ------------------------------------------------------------------------------------------------------------
# Forward passes over prompt + response


def full_sequence(prompt: jax.Array, prompt_mask: jax.Array, response: jax.Array):
    """(tokens [B, P + N], mask, positions): the left-padded prompt and the response; every response token is
    attended to (those after EOS come after everything that counts), padding is not, positions skip it."""
    tokens = jnp.concatenate([prompt, response], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(bool), jnp.ones(response.shape, bool)], axis=1)
    return tokens, mask, sample.positions_from_mask(mask)


def response_logprobs(model: GPT, params, tokens, mask, positions, n: int, temperature: float):
    """(log π(y_t), entropy) [B, N] of the last n tokens at `temperature` (logits at positions P-1 .. P+N-2).

    Only the response's logits are formed, model.cfg.logits_chunk positions at a time (vocab tiling)."""
    hidden = model.apply({"params": params}, tokens, positions, mask.astype(jnp.int32), return_hidden=True)
    wte = nn.meta.unbox(params["wte"])
    logp, _, entropy = vocab_tiling.token_logprobs(
        hidden[:, -n - 1 : -1],  # [B, N, D]
        wte,
        tokens[:, -n:],
        chunk=model.cfg.logits_chunk,
        temperature=temperature,
        entropy=True,
    )
    return logp, entropy


def response_values(model: RewardModel, params, tokens, mask, positions, n: int) -> jax.Array:
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
        if hp.whiten_rewards:  # the scale, not the mean: a constant reward still means something
            rewards = whiten(rewards, rmask, shift_mean=False)
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
        "loss": total,
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
        loss_sum, weight = lm.lm_loss_sum(policy_params, ptx_batch, None, models.policy)
        ptx = loss_sum / jnp.maximum(weight, 1.0)
        total = total + hp.ptx_coef * ptx
        metrics["ptx_loss"] = ptx
        metrics["loss"] = total
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


def make_init_fn(
    models: Models, cfg: ml_collections.ConfigDict, sft_params, rm_params, seq_len: int, gain=1.0, bias=0.0
):
    """rng -> PPOState with annotated params: the policy from SFT, the value model from the RM with gain and
    bias folded into its head, so that V starts on the normalised reward scale (random when either is None),
    β = rlhf.kl_coef. The policy follows config.train (lr, schedule over all PPO steps); the value model the same
    with lr = rlhf.value_lr. The params are read inside the init, so its output is the only new copy."""
    r = cfg.rlhf
    t = cfg.train.copy_and_resolve_references()
    t.steps = max(1, r.iterations * r.ppo_epochs * (r.rollout_batch // r.minibatch))
    tv = t.copy_and_resolve_references()
    tv.lr = r.value_lr
    dummy = np.zeros((1, seq_len), np.int32)  # numpy: nothing runs on devices of a compile-only topology
    tx_policy, tx_value = make_optimizer(t), make_optimizer(tv)  # built once: the state's static metadata

    def init_fn(rng: jax.Array) -> PPOState:
        k_pi, k_v, k_grow = jax.random.split(rng, 3)
        pi = models.policy.init(k_pi, dummy)["params"]
        v = models.value.init(k_v, dummy)["params"]
        if sft_params is not None:
            pi = checkpoints.merge_params(pi, sft_params, k_grow, models.policy.cfg.init_std)
        if rm_params is not None:
            v = checkpoints.merge_params(v, fold_affine(rm_params, gain, bias), k_grow, models.value.cfg.init_std)
        return PPOState(
            policy=TrainState.create(apply_fn=models.policy.apply, params=pi, tx=tx_policy),
            value=TrainState.create(apply_fn=models.value.apply, params=v, tx=tx_value),
            kl_coef=jnp.asarray(r.kl_coef, jnp.float32),
            iteration=jnp.asarray(0, jnp.int32),
        )

    return init_fn


def init_sharded(init_fn, mesh: Mesh, rng: jax.Array) -> PPOState:
    """A fresh PPOState placed on `mesh` with the shardings of its logical annotations."""
    return checkpoints.init_state(init_fn, mesh, rng)


def make_frozen(models: Models, ref_params, rm_params, gain: float, bias: float, mesh: Mesh, seq_len: int):
    """The frozen half: reference GPT and reward model params sharded like the trained ones, gain and bias.
    Params already in their shardings (as restored) are kept as they are: no copy."""
    return {
        "ref": common.place(ref_params, reward.param_shardings(models.policy, mesh, seq_len)),
        "reward": common.place(rm_params, reward.param_shardings(models.value, mesh, seq_len)),
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
# The models


def ppo_models(cfg: ml_collections.ConfigDict) -> Models:
    """Policy/reference GPT of config.model and value/reward model of the reward model's own shape
    (config.rlhf.reward_model, else the one saved with rlhf.reward_from, else the policy's), dropout off (PPO's
    log-probs and values must be those of the deterministic networks, in rollouts and updates alike)."""
    policy_cfg = cfg.model.copy_and_resolve_references()
    rm_cfg = sizes.reward_model_config(cfg, cfg.rlhf.reward_from)
    for m in (policy_cfg, rm_cfg):
        m.update(dropout=0.0, attn_dropout=0.0)
    return Models(policy=GPT(GPTConfig.from_config(policy_cfg)), value=RewardModel(GPTConfig.from_config(rm_cfg)))
