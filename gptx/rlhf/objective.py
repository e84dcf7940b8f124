"""The PPO objective's formulas, pure functions on [B, N] response arrays with a mask of real response tokens:
per-token KL-penalised rewards (Ziegler et al., 2019), generalised advantage estimation (Schulman et al.,
2016), whitening, the clipped policy and value losses (Schulman et al., 2017) and the adaptive KL
controller. gptx/rlhf/ppo.py trains with them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gptx.rlhf import common


def kl_rewards(score: jax.Array, logp: jax.Array, ref_logp: jax.Array, mask: jax.Array, kl_coef: jax.Array):
    """(rewards [B, N], kl [B, N]): r_t = -β (log π - log π_ref) on real tokens, plus `score` [B] at each row's
    last real token."""
    m = mask.astype(jnp.float32)
    kl = (logp - ref_logp) * m
    rewards = -kl_coef * kl
    last = jax.nn.one_hot(common.last_index(mask), mask.shape[-1], dtype=jnp.float32) * m
    return rewards + score[:, None] * last, kl


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float):
    """Generalised advantage estimation over [B, N] (Schulman et al., 2016), positions after the mask ignored:

    δ_t = r_t + γ V_{t+1} - V_t,   A_t = δ_t + γ λ A_{t+1},   returns = A + V
    """
    m = mask.astype(jnp.float32)
    values, rewards = values * m, rewards * m
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = rewards + gamma * next_values - values

    def back(carry, x):
        delta, mt = x
        adv = (delta + gamma * lam * carry) * mt
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(deltas[:, 0]), (deltas.T, m.T), reverse=True)
    adv = adv.T
    return adv, (adv + values) * m


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / sqrt(var + eps) over the masked entries (mean added back when not shift_mean)."""
    mean = common.masked_mean(x, mask)
    var = common.masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * mask.astype(x.dtype)


def policy_loss(logp, old_logp, advantages, mask, cliprange: float):
    """PPO's clipped surrogate, as a loss: mean over real tokens of max(-A·ρ, -A·clip(ρ, 1 ± ε)), ρ = π/π_old.
    Returns (loss, clip fraction, approximate KL ½(log ρ)²)."""
    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    losses = jnp.maximum(-advantages * ratio, -advantages * jnp.clip(ratio, 1.0 - cliprange, 1.0 + cliprange))
    clipped = (jnp.abs(ratio - 1.0) > cliprange).astype(jnp.float32)
    return (
        common.masked_mean(losses, mask),
        common.masked_mean(clipped, mask),
        common.masked_mean(0.5 * log_ratio**2, mask),
    )


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """½ mean over real tokens of max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, ±ε_v).
    Returns (loss, clip fraction)."""
    clipped_v = old_values + jnp.clip(values - old_values, -cliprange_value, cliprange_value)
    losses = jnp.maximum((values - returns) ** 2, (clipped_v - returns) ** 2)
    frac = ((values - returns) ** 2 < (clipped_v - returns) ** 2).astype(jnp.float32)
    return 0.5 * common.masked_mean(losses, mask), common.masked_mean(frac, mask)


def update_kl_coef(kl_coef, mean_kl, n_steps: int, target: float, horizon: float, adaptive: bool):
    """Ziegler et al. (2019), Sec. 2.2: e = clip(KL / target - 1, -0.2, 0.2); β ← β (1 + e · n_steps / horizon).
    `mean_kl` is the per-episode KL (summed over tokens) averaged over the n_steps episodes of the rollout."""
    if not adaptive:
        return kl_coef
    error = jnp.clip(mean_kl / target - 1.0, -0.2, 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)
