"""PPO-ptx: the formulas (GAE, whitening, clipping, the KL controller) against their definitions, the classic
padding and position bugs, tokens after EOS, the ptx gradient, and sharded vs single-device updates."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from jax.sharding import PartitionSpec

from gptx import mesh as mesh_lib
from gptx import sample
from gptx.rlhf import common, objective, ppo

P, N, B = 6, 5, 8  # prompt length (left-padded), response length, episodes


def test_gae_equals_a_reverse_python_loop():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    lengths = [7, 3, 1, 5]
    mask = np.arange(7)[None] < np.asarray(lengths)[:, None]
    gamma, lam = 0.9, 0.95
    adv, ret = objective.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma, lam)
    for b, n in enumerate(lengths):
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1] if t + 1 < n else 0.0
            last = rewards[b, t] + gamma * next_v - values[b, t] + gamma * lam * last
            np.testing.assert_allclose(adv[b, t], last, rtol=1e-5)
            np.testing.assert_allclose(ret[b, t], last + values[b, t], rtol=1e-5)
        assert not np.any(np.asarray(adv[b, n:])) and not np.any(np.asarray(ret[b, n:]))


def test_whitening_uses_the_masked_entries_only():
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(3, 6))
    mask = np.arange(6)[None] < np.asarray([[6], [2], [4]])
    w = np.asarray(objective.whiten(jnp.asarray(x), jnp.asarray(mask)))
    real = x[mask]
    np.testing.assert_allclose(w[mask], (real - real.mean()) / np.sqrt(real.var() + 1e-8), rtol=1e-5)
    assert not np.any(w[~mask])
    kept = np.asarray(objective.whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean=False))
    np.testing.assert_allclose(kept[mask].mean(), real.mean(), rtol=1e-5)


def test_clipped_policy_and_value_losses_match_hand_computed_cases():
    mask = jnp.ones((1, 4), bool)
    adv = jnp.asarray([[1.0, -1.0, 1.0, -1.0]])
    ratio = jnp.asarray([[1.5, 1.5, 0.5, 0.5]])
    loss, clipfrac, _ = objective.policy_loss(jnp.log(ratio), jnp.zeros((1, 4)), adv, mask, 0.2)
    # max(-Aρ, -A clip(ρ)): -1.2 (gain capped at 1.2), 1.5 (loss not capped), -0.5, 0.8
    np.testing.assert_allclose(loss, (-1.2 + 1.5 - 0.5 + 0.8) / 4, rtol=1e-6)
    assert float(clipfrac) == 1.0
    inside, frac_inside, _ = objective.policy_loss(jnp.log(jnp.full((1, 4), 1.1)), jnp.zeros((1, 4)), adv, mask, 0.2)
    np.testing.assert_allclose(inside, 0.0, atol=1e-7)
    assert float(frac_inside) == 0.0
    v = jnp.asarray([[0.5, -0.5]])
    vl, _ = objective.value_loss(v, jnp.zeros((1, 2)), jnp.ones((1, 2)), jnp.ones((1, 2), bool), 0.2)
    # clipped values 0.2 and -0.2: max(0.25, 0.64) and max(2.25, 1.44)
    np.testing.assert_allclose(vl, 0.5 * (0.64 + 2.25) / 2, rtol=1e-6)


def test_kl_penalty_is_per_token_and_the_score_sits_on_the_last_real_token():
    logp = jnp.asarray([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = jnp.asarray([[-1.5, -1.0, -0.5, -9.0], [-2.0, -2.0, -2.0, -2.0]])
    mask = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0]], bool)  # EOS at t = 2 and t = 0
    rewards, kl = objective.kl_rewards(jnp.asarray([10.0, 20.0]), logp, ref, mask, 0.5)
    np.testing.assert_allclose(kl, [[0.5, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(rewards, [[-0.25, 0.5, 10.0, 0.0], [-0.5 + 20.0, 0.0, 0.0, 0.0]])


def test_adaptive_kl_controller_follows_ziegler_et_al():
    for kl, target, n, horizon in ((9.0, 6.0, 64, 10000), (1.0, 6.0, 512, 1000), (6.3, 6.0, 32, 100)):
        err = np.clip(kl / target - 1, -0.2, 0.2)
        expect = 0.1 * (1 + err * n / horizon)
        np.testing.assert_allclose(objective.update_kl_coef(0.1, kl, n, target, horizon, True), expect, rtol=1e-6)
    assert objective.update_kl_coef(0.1, 50.0, 64, 6.0, 100, False) == 0.1  # fixed β


def setup(mesh, **rlhf):
    cfg = tiny_config(vocab_size=64, block_size=16, n_layer=1)
    cfg.rlhf.update(
        max_prompt_len=P, max_response_len=N, rollout_batch=B, minibatch=4, ppo_epochs=2, ptx_batch=4, kl_coef=0.1
    )
    cfg.rlhf.update(rlhf)
    cfg.train.update(lr=1e-3, warmup_steps=0)
    models = ppo.ppo_models(cfg)
    hp = ppo.PPOConfig.from_config(cfg.rlhf, eos_id=2)
    x = jnp.zeros((1, P + N), jnp.int32)
    pi, rm = common.random_params(models.policy, x, seed=0), common.random_params(models.value, x, seed=1)
    with mesh_lib.activation_rules(mesh):
        init_fn = ppo.make_init_fn(models, cfg, pi, rm, P + N, 1.5, -0.3)
        state = ppo.init_sharded(init_fn, mesh, jax.random.key(0, impl="unsafe_rbg"))
        frozen = ppo.make_frozen(models, pi, rm, 1.5, -0.3, mesh, P + N)
    return cfg, models, hp, state, frozen


def episodes(seed=0):
    """Left-padded prompts of lengths 1..P and responses whose first EOS comes at different places (or never)."""
    rng = np.random.default_rng(seed)
    prompt = np.full((B, P), 3, np.int32)
    prompt_mask = np.zeros((B, P), bool)
    for b in range(B):
        n = 1 + b % P
        prompt[b, P - n :] = [1, *rng.integers(4, 64, n - 1)]
        prompt_mask[b, P - n :] = True
    response = rng.integers(4, 64, (B, N)).astype(np.int32)
    eos_at = [0, 2, 4, None, 1, 3, None, 2]
    mask = np.ones((B, N), bool)
    for b, t in enumerate(eos_at):
        if t is not None:
            response[b, t] = 2
            mask[b, t + 1 :] = False
    return {"prompt": prompt, "prompt_mask": prompt_mask, "response": response, "response_mask": mask}


PTX_COEF = 2.5


def ptx_batch(weight: float = 1.0):
    inputs = np.random.default_rng(2).integers(4, 64, (4, 10)).astype(np.int32)
    return {
        "inputs": inputs,
        "targets": np.roll(inputs, -1, axis=1),
        "positions": np.broadcast_to(np.arange(10), (4, 10)).astype(np.int32),
        "segment_ids": np.ones((4, 10), np.int32),
        "weights": np.full((4, 10), weight, np.float32),
    }


@dataclasses.dataclass
class Single:
    """One PPO set-up on one device and its jitted functions, shared by the tests (each compiled once).

    The loss is compiled for PPO-ptx with coefficient PTX_COEF; a pretraining batch of weight 0 turns its
    ptx term off, which gives the plain PPO loss from the same program.
    """

    mesh: Any
    models: ppo.Models
    hp: ppo.PPOConfig
    state: ppo.PPOState
    frozen: dict

    def __post_init__(self):
        self.steps = ppo.compile_steps(self.models, self.hp, self.mesh, jax.tree.map(lambda x: x.sharding, self.state))
        self.loss_and_grad = jax.jit(jax.value_and_grad(ppo.ppo_losses, has_aux=True), static_argnames=("models", "hp"))

    def rollout(self, ep):
        with mesh_lib.activation_rules(self.mesh):
            return self.steps.score(self.state, self.frozen, *common.put_rows(self.mesh, ep).values())

    def losses(self, rollout, ptx_weight: float = 0.0):
        params = (self.state.policy.params, self.state.value.params)
        hp = dataclasses.replace(self.hp, ptx_coef=PTX_COEF)
        with mesh_lib.activation_rules(self.mesh):
            return self.loss_and_grad(params, rollout, ptx_batch(ptx_weight), models=self.models, hp=hp)


@pytest.fixture(scope="module")
def single():
    mesh = mesh_lib.make_mesh(tiny_config().mesh, devices=jax.devices()[:1])
    _, models, hp, state, frozen = setup(mesh, temperature=0.7)
    return Single(mesh, models, hp, state, frozen)


def test_before_any_update_ratio_is_one_and_kl_zero_on_left_padded_prompts(single):
    ep = episodes()
    rollout, metrics = single.rollout(ep)
    (_, m), grads = single.losses(rollout)
    assert float(metrics["kl"]) == 0.0  # the policy starts as the reference
    np.testing.assert_allclose(m["ratio"], 1.0, atol=1e-6)
    assert float(m["clipfrac"]) == 0.0 and float(m["approx_kl"]) < 1e-12
    # The log-probs of a left-padded row equal those of its prompt alone, positions from 0: no padding bug.
    b = 2
    real = ep["prompt"][b][ep["prompt_mask"][b]]
    alone = jnp.asarray(np.concatenate([real, ep["response"][b]]))[None]
    logits = jax.jit(single.models.policy.apply)({"params": single.state.policy.params}, alone)
    logp_all = jax.nn.log_softmax(logits[:, -N - 1 : -1] / single.hp.temperature)  # every logit at once
    logp = jnp.take_along_axis(logp_all, alone[:, -N:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(rollout["logprobs"][b], logp[0] * ep["response_mask"][b], rtol=1e-5, atol=1e-6)
    # Tokens after EOS carry nothing: a zero advantage, return, log-prob and value.
    after = ~ep["response_mask"]
    for key in ("advantages", "returns", "logprobs", "values"):
        assert not np.any(np.asarray(rollout[key])[after]), key
    assert jax.tree.reduce(lambda a, g: a and bool(jnp.all(jnp.isfinite(g))), grads, True)


def test_the_score_is_read_at_the_last_real_response_token(single):
    ep = episodes(5)
    rollout, metrics = single.rollout(ep)
    # Reference: the reward model on each episode alone (no padding), at its last real token, normalised.
    rm = jax.jit(single.models.value.apply)
    for b in (3, 5):  # a response cut at the length limit, one ending in EOS
        seq = np.concatenate([ep["prompt"][b][ep["prompt_mask"][b]], ep["response"][b][ep["response_mask"][b]]])
        raw = rm({"params": single.frozen["reward"]}, jnp.asarray(seq)[None])[0, -1]
        np.testing.assert_allclose(rollout["episode_score"][b, 0], 1.5 * raw - 0.3, rtol=1e-5, atol=1e-6)


def test_tokens_after_eos_carry_no_loss(single):
    ep = episodes(1)
    rollout, _ = single.rollout(ep)
    (base, _), base_grads = single.losses(rollout)
    after = jnp.asarray(~ep["response_mask"])
    garbage = dict(rollout)
    for key in ("advantages", "returns", "logprobs", "values"):
        garbage[key] = jnp.where(after, 123.0, rollout[key])
    tokens = rollout["tokens"]
    garbage["tokens"] = tokens.at[:, P:].set(jnp.where(after, 7, tokens[:, P:]))
    (changed, _), grads = single.losses(garbage)
    np.testing.assert_allclose(changed, base, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_ptx_loss_enters_the_policy_gradient_with_its_coefficient(single):
    rollout, _ = single.rollout(episodes(2))
    (_, m), g_mix = single.losses(rollout, ptx_weight=1.0)
    (_, m0), g_ppo = single.losses(rollout, ptx_weight=0.0)
    ptx = ptx_batch()
    lm_loss = lambda p: ppo.lm.lm_loss_sum(p, ptx, None, single.models.policy)[0] / 40.0  # noqa: E731
    with mesh_lib.activation_rules(single.mesh):
        ptx_loss, g_lm = jax.jit(jax.value_and_grad(lm_loss))(single.state.policy.params)
    np.testing.assert_allclose(m["ptx_loss"], ptx_loss, rtol=1e-6)
    assert float(m0["ptx_loss"]) == 0.0
    for a, b, c in zip(jax.tree.leaves(g_mix[0]), jax.tree.leaves(g_ppo[0]), jax.tree.leaves(g_lm), strict=True):
        np.testing.assert_allclose(a, b + PTX_COEF * c, rtol=2e-4, atol=1e-7)
    for a, b in zip(jax.tree.leaves(g_mix[1]), jax.tree.leaves(g_ppo[1]), strict=True):  # the value model: untouched
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sampler_logprobs_equal_the_training_forward_pass(single):
    ep = episodes(3)
    sampling = sample.SamplingConfig(max_new_tokens=N, temperature=0.7, eos_id=2, pad_id=3)
    with mesh_lib.activation_rules(single.mesh):
        out = sample.decode(
            single.models.policy,
            single.state.policy.params,
            jnp.asarray(ep["prompt"]),
            jnp.asarray(ep["prompt_mask"]),
            jax.random.key(0),
            sampling,
        )
    ep.update(response=np.asarray(out.tokens), response_mask=np.asarray(out.mask))
    rollout, _ = single.rollout(ep)
    m = np.asarray(out.mask)
    assert m.sum() > B  # some rows sample more than one token
    np.testing.assert_allclose(np.asarray(rollout["logprobs"])[m], np.asarray(out.logprobs)[m], rtol=1e-4, atol=1e-5)


def sharded_setup():
    cfg = tiny_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    _, models, hp, state, frozen = setup(mesh, temperature=0.7)
    assert state.policy.params["h_0"]["mlp"]["fc_kernel"].sharding.spec == PartitionSpec("fsdp", "tensor")
    return Single(mesh, models, hp, state, frozen)


def assert_trees_close(a, b):
    for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6)


def test_sharded_and_single_device_rollouts_and_ppo_gradients_agree(single):
    ep = episodes(4)
    eight = sharded_setup()
    rollout, metrics = single.rollout(ep)
    sharded_rollout, sharded_metrics = eight.rollout(ep)
    assert_trees_close((rollout, metrics), (sharded_rollout, sharded_metrics))
    assert_trees_close(single.losses(rollout, 1.0), eight.losses(sharded_rollout, 1.0))


@pytest.mark.slow
def test_sharded_and_single_device_ppo_updates_agree(single):
    ep = episodes(4)
    eight = sharded_setup()
    out = []
    for s in (single, eight):
        rollout, metrics = s.rollout(ep)
        state = jax.tree.map(jnp.copy, s.state)  # the update donates its state
        with mesh_lib.activation_rules(s.mesh):
            state, m = s.steps.update(state, rollout, None, jax.random.key(1), metrics["kl"])
        out.append((state.policy.params, state.value.params, m, state.kl_coef))
    assert_trees_close(*out)


class CharTokenizer:
    """One id per character (4..63), BOS 1, EOS 2, pad 3: a tokenizer for PPO runs on the bundled corpus."""

    bos_id, eos_id, pad_id, vocab_size = 1, 2, 3, 64

    def encode(self, text):
        return [4 + ord(c) % 60 for c in text]

    def document(self, text):
        return [self.bos_id, *self.encode(text), self.eos_id]

    def decode(self, ids):
        return "".join(chr(32 + i) for i in ids)


def ppo_loop_run(workdir, mesh, iterations, term_at=None):
    """PPO-ptx through the training loop for `iterations` (SIGTERM sent during iteration `term_at`)."""
    import os
    import signal

    from gptx.rlhf import ppo_run, reward
    from gptx.train import loop

    cfg, models, hp, state, frozen = setup(mesh, ptx_coef=0.5)
    cfg.train.update(ckpt_every=100, keep_ckpts=2)
    cfg.data.seq_len = 16  # ptx batches within the context
    pi, rm_params = jax.device_get(frozen["ref"]), jax.device_get(frozen["reward"])
    rm = reward.LoadedReward(models.value, rm_params, 1.5, -0.3)
    prompts = [f"prompt {i}: {'abc' * (i % 3)}" for i in range(20)]
    trainer = ppo_run.make_trainer(
        cfg, models, hp, CharTokenizer(), train_prompts=prompts, sft_params=pi, rm=rm, mesh=mesh
    )
    if term_at is not None:
        iteration = trainer.iteration

        def interrupted(state, step, data_it):
            out = iteration(state, step, data_it)
            if step == term_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        trainer.iteration = interrupted
    cfg.train.update(steps=iterations, log_every=1)
    return loop.train(trainer, cfg, str(workdir), mesh)


def test_sigterm_during_ppo_saves_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    from gptx.train import checkpoints, logs, loop

    mesh = mesh_lib.make_mesh(tiny_config().mesh, devices=jax.devices()[:1])
    full = ppo_loop_run(tmp_path / "full", mesh, 4)
    assert int(full.state.iteration) == 4
    with pytest.raises(loop.Preempted) as stop:
        ppo_loop_run(tmp_path / "cut", mesh, 4, term_at=1)
    assert stop.value.step == 2
    assert checkpoints.latest_step(str(tmp_path / "cut")) == 2  # saved on SIGTERM (ckpt_every is 100)
    resumed = ppo_loop_run(tmp_path / "cut", mesh, 4)
    assert int(resumed.state.iteration) == 4

    timing = ("time_", "rollout_tokens_per_s", "steps_per_s", "tokens_per_s", "mfu")
    rows = {
        d: {
            r["step"]: {k: v for k, v in r.items() if not k.startswith(timing)} for r in logs.read_metrics(tmp_path / d)
        }
        for d in ("full", "cut")
    }
    assert sorted(rows["cut"]) == sorted(rows["full"]) == [1, 2, 3, 4]
    for step in range(1, 5):
        assert rows["cut"][step].keys() == rows["full"][step].keys()
        for key, value in rows["full"][step].items():
            np.testing.assert_allclose(rows["cut"][step][key], value, rtol=1e-5, err_msg=f"{key} at {step}")
    assert "ptx_loss" in rows["full"][4]  # the pretraining data position resumed too
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(resumed.state.policy.params),
        jax.device_get(full.state.policy.params),
    )


def test_whitened_rewards_have_unit_variance_and_keep_their_mean(single):
    """lm-human-preferences' whiten_rewards: the per-token rewards of the rollout over its real tokens, scaled to
    unit variance with the mean kept (shift_mean=False), before GAE; numpy reference from the raw rewards."""
    ep = episodes(6)
    hp = dataclasses.replace(single.hp, whiten_rewards=True, lam=1.0, gamma=1.0)
    score = jax.jit(ppo.make_score_fn(single.models, hp))
    with mesh_lib.activation_rules(single.mesh):
        rollout, _ = score(single.state, single.frozen, *common.put_rows(single.mesh, ep).values())
    m = ep["response_mask"]
    raw = np.zeros((B, N))
    scores = np.asarray(rollout["episode_score"])[:, 0]  # KL is 0 before any update: only the score is a reward
    raw[np.arange(B), m.sum(1) - 1] = scores
    mean, var = raw[m].mean(), raw[m].var()
    white = np.where(m, (raw - mean) / np.sqrt(var + 1e-8) + mean, 0.0)
    # With γ = λ = 1 the return at each token is the sum of the rewards from it on.
    expect = np.where(m, np.cumsum(white[:, ::-1], axis=1)[:, ::-1], 0.0)
    np.testing.assert_allclose(rollout["returns"], expect, rtol=1e-4, atol=1e-5)
