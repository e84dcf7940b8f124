"""InstructGPT at its real shape: a reward (and value) model of its own size trains beside the policy on one mesh,
sharded as on one device; the value model starts on the normalised reward scale; the frozen models are the
restored params themselves and never constants of a program."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from jax.sharding import PartitionSpec

from gptx import mesh as mesh_lib
from gptx.config import ConfigError
from gptx.models import heads
from gptx.rlhf import common, ppo, reward, sizes
from gptx.train import checkpoints

P, N, B = 6, 5, 8  # prompt length (left-padded), response length, episodes


def episodes(seed: int) -> dict[str, np.ndarray]:
    """Left-padded prompts of lengths 1..P, responses ending in EOS at different places or cut at N."""
    rng = np.random.default_rng(seed)
    prompt, prompt_mask = np.full((B, P), 3, np.int32), np.zeros((B, P), bool)
    for b in range(B):
        n = 1 + (b + seed) % P
        prompt[b, P - n :], prompt_mask[b, P - n :] = [1, *rng.integers(4, 64, n - 1)], True
    response, mask = rng.integers(4, 64, (B, N)).astype(np.int32), np.ones((B, N), bool)
    for b, t in enumerate([0, 2, 4, None, 1, 3, None, 2]):
        if t is not None:
            response[b, t], mask[b, t + 1 :] = 2, False
    return {"prompt": prompt, "prompt_mask": prompt_mask, "response": response, "response_mask": mask}


def config(**reward_model):
    cfg = tiny_config(vocab_size=64, block_size=16, n_layer=1, n_head=2, d_model=32)
    cfg.rlhf.update(max_prompt_len=P, max_response_len=N, rollout_batch=B, minibatch=4, ppo_epochs=2, kl_coef=0.1)
    cfg.rlhf.reward_model.update(reward_model)
    cfg.train.update(lr=1e-3, warmup_steps=0)
    return cfg


def build(cfg, mesh, rm_params=None, gain=1.5, bias=-0.3, fold=True):
    """(models, hp, state, frozen) of random policy/reference and reward/value params on `mesh`."""
    models = ppo.ppo_models(cfg)
    hp = ppo.PPOConfig.from_config(cfg.rlhf, eos_id=2)
    x = jnp.zeros((1, P + N), jnp.int32)
    pi = common.random_params(models.policy, x, seed=0)
    rm = rm_params if rm_params is not None else common.random_params(models.value, x, seed=1)
    with mesh_lib.activation_rules(mesh):
        frozen = ppo.make_frozen(models, pi, rm, gain, bias, mesh, P + N)
        init_fn = ppo.make_init_fn(
            models, cfg, frozen["ref"], frozen["reward"], P + N, *((gain, bias) if fold else (1.0, 0.0))
        )
        state = ppo.init_sharded(init_fn, mesh, jax.random.key(0))
    return models, hp, state, frozen


# ------------------------------------------------------------------------------------------------------------
# The reward model's shape


def test_reward_model_shape_comes_from_a_paper_size_a_workdir_or_overrides(tmp_path):
    cfg = config()
    assert sizes.reward_model_config(cfg).to_dict() == cfg.model.to_dict()  # default: the policy's
    cfg.rlhf.update(max_prompt_len=8, max_response_len=8)
    cfg.rlhf.reward_model.name = "gpt3:6.7b"  # Brown et al., Table 2.1: 32 layers, d 4096, 32 heads of 128
    m = sizes.reward_model_config(cfg)
    assert (m.n_layer, m.d_model, m.n_head, m.d_head, m.arch) == (32, 4096, 32, 128, "gpt3")
    assert (m.vocab_size, m.block_size) == (64, 16)  # the policy's tokens and context
    cfg.rlhf.reward_model.update(name="gpt2-355m", n_layer=2)
    m = sizes.reward_model_config(cfg)
    assert (m.n_layer, m.d_model, m.n_head) == (2, 1024, 16)  # nonzero fields override the named size
    saved = config().model.to_dict() | {"n_layer": 3, "d_model": 48, "n_head": 4, "vocab_size": 80}
    (tmp_path / "config.json").write_text(json.dumps({"model": saved}))
    cfg = config()
    m = sizes.reward_model_config(cfg, reward_from=str(tmp_path))  # an rm run's saved shape
    assert (m.n_layer, m.d_model, m.n_head, m.vocab_size) == (3, 48, 4, 80)
    cfg.rlhf.reward_model.name = "gpt3:9b"
    with pytest.raises(ConfigError, match="no size '9b'"):
        sizes.reward_model_config(cfg)
    cfg.rlhf.reward_model.name = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="neither a paper size"):
        sizes.reward_model_config(cfg)
    cfg.rlhf.reward_model.update(name="", d_model=50, n_head=3)
    with pytest.raises(ConfigError, match="config.rlhf.reward_model: .*not divisible"):
        sizes.reward_model_config(cfg)


def iterations(cfg, mesh, n: int = 3):
    """Metrics of n PPO iterations (fixed episodes, so sampling noise cannot differ) and the final params."""
    models, hp, state, frozen = build(cfg, mesh)
    steps = ppo.compile_steps(models, hp, mesh, jax.tree.map(lambda x: x.sharding, state))
    rows = []
    with mesh_lib.activation_rules(mesh):
        for i in range(n):
            rollout, metrics = steps.score(state, frozen, *common.put_rows(mesh, episodes(i)).values())
            state, update = steps.update(state, rollout, None, jax.random.key(i), metrics["kl"])
            rows.append(jax.device_get({**metrics, **update}))
    return rows, state, jax.device_get((state.policy.params, state.value.params))


@pytest.mark.slow  # about a minute of compiling on 2 cores
def test_policy_and_a_wider_deeper_reward_model_train_on_a_2x2x2_mesh_as_on_one_device():
    cfg = config(n_layer=2, d_model=48, n_head=4)  # policy: 1 layer x 32, 2 heads
    single, _, single_params = iterations(cfg, mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1]))
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    sharded, state, sharded_params = iterations(cfg, mesh_lib.make_mesh(cfg.mesh))
    fc = state.value.params["gpt"]["h_1"]["mlp"]["fc_kernel"]  # the RM's own second layer, 48 -> 192
    assert fc.shape == (48, 192) and fc.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert state.policy.params["h_0"]["mlp"]["fc_kernel"].shape == (32, 128)
    assert single[-1]["value_error"] != single[0]["value_error"]  # the models did train
    for step, (a, b) in enumerate(zip(single, sharded, strict=True)):
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=2e-3, atol=2e-5, err_msg=f"{key} at iteration {step}")
    for a, b in zip(jax.tree.leaves(single_params), jax.tree.leaves(sharded_params), strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-5)


# ------------------------------------------------------------------------------------------------------------
# The value model's starting scale


def bag_of_tokens(params, seed: int = 0):
    """A reward model whose output at every position is a smooth function of the mean of the tokens so far (one
    layer of uniform causal attention, no MLP): like a trained RM, its value on a prefix predicts the score of
    the whole episode. Raw scores are offset by 3 and scaled, as an RM's are before normalisation."""
    p = jax.tree.map(np.array, params)
    g, blk = p["gpt"], p["gpt"]["h_0"]
    v, d = g["wte"].shape
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    u = (u - u.mean()) / np.linalg.norm(u - u.mean())
    w = rng.standard_normal(d)
    w = w - w.mean() - (w @ u) * u
    g["wte"][:] = rng.standard_normal((v, 1)) * u + w / np.linalg.norm(w)  # token t: a_t u + w
    g["wpe"][:] = 0.0
    qkv = blk["attn"]["qkv_kernel"]  # [D, 3, heads, head_dim]: q = k = 0 (uniform attention), v = identity
    qkv[:] = 0.0
    qkv[:, 2] = np.eye(d).reshape(d, *qkv.shape[2:])
    blk["attn"]["out_kernel"][:] = 10.0 * np.eye(d).reshape(*qkv.shape[2:], d)
    for leaf in (*blk["mlp"].values(), blk["attn"]["qkv_bias"], blk["attn"]["out_bias"]):
        leaf[:] = 0.0
    for ln in (blk["ln_1"], blk["ln_2"], g["ln_f"]):
        ln["scale"][:], ln["bias"][:] = 1.0, 0.0
    p["head"]["kernel"][:, 0] = 0.3 * np.sqrt(d) * u
    p["head"]["bias"][:] = 3.0
    return jax.tree.map(jnp.asarray, p)


def value_errors(fold: bool) -> tuple[float, float]:
    """(value error, error of the best constant predictor) over the response tokens of iteration 0's rollouts,
    the RM normalised on the same episodes (mean 0, std 1), γ = 1, λ = 0.95, no KL yet."""
    cfg = config()
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    models = ppo.ppo_models(cfg)
    rm = bag_of_tokens(common.random_params(models.value, jnp.zeros((1, P + N), jnp.int32), seed=1))
    eps = [episodes(s) for s in range(4)]
    score = jax.jit(lambda p, t, m: reward.sequence_scores(models.value, p, t, m))
    cat = lambda e, a, b: np.concatenate([e[a], e[b]], axis=1)  # [B, P + N]
    raw = np.concatenate([score(rm, cat(e, "prompt", "response"), cat(e, "prompt_mask", "response_mask")) for e in eps])
    norm = reward.normalisation(raw)
    models, hp, state, frozen = build(cfg, mesh, rm, norm["gain"], norm["bias"], fold=fold)
    step = jax.jit(ppo.make_score_fn(models, hp))
    v, r, m = [], [], []
    with mesh_lib.activation_rules(mesh):
        for e in eps:
            rollout, _ = step(state, frozen, *common.put_rows(mesh, e).values())
            v.append(rollout["values"]), r.append(rollout["returns"]), m.append(rollout["response_mask"])
    v, r, m = (np.concatenate(jax.device_get(x)) for x in (v, r, m))
    return float(np.mean((v - r)[m] ** 2)), float(np.var(r[m]))


def test_value_model_starts_on_the_normalised_scale_no_worse_than_a_constant():
    error, constant = value_errors(fold=True)
    assert error <= constant
    unfolded, constant_unfolded = value_errors(fold=False)  # the raw RM head as the value head: off-scale
    assert unfolded > 3 * constant_unfolded


def test_folded_head_outputs_gain_times_reward_plus_bias():
    cfg = config()
    models = ppo.ppo_models(cfg)
    x = jnp.asarray(np.random.default_rng(0).integers(4, 64, (2, P + N)), jnp.int32)
    params = common.random_params(models.value, x, seed=4)
    folded = heads.fold_affine(params, 2.15, -1.94)
    np.testing.assert_allclose(
        models.value.apply({"params": folded}, x), 2.15 * models.value.apply({"params": params}, x) - 1.94, rtol=1e-5
    )


# ------------------------------------------------------------------------------------------------------------
# No copies of the frozen models


def test_frozen_models_are_the_restored_params_and_the_init_holds_no_constants():
    cfg = config(n_layer=2, d_model=48, n_head=4)
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    models = ppo.ppo_models(cfg)
    x = jnp.zeros((1, P + N), jnp.int32)
    shardings = [reward.param_shardings(m, mesh, P + N) for m in (models.policy, models.value)]
    ref, rm = (
        jax.device_put(common.random_params(m, x, seed=i), s)  # as restore_params leaves them: in their shardings
        for i, (m, s) in enumerate(zip((models.policy, models.value), shardings, strict=True))
    )
    with mesh_lib.activation_rules(mesh):
        frozen = ppo.make_frozen(models, ref, rm, 2.0, 0.5, mesh, P + N)
        init_fn = ppo.make_init_fn(models, cfg, frozen["ref"], frozen["reward"], P + N, 2.0, 0.5)
        previous = jax.config.jax_captured_constants_warn_bytes
        jax.config.update("jax_captured_constants_warn_bytes", 4096)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message=".*constants were captured")
                state = checkpoints.init_state(init_fn, mesh, jax.random.key(0))
        finally:
            jax.config.update("jax_captured_constants_warn_bytes", previous)
    assert all(a is b for a, b in zip(jax.tree.leaves(frozen["ref"]), jax.tree.leaves(ref), strict=True))
    assert all(a is b for a, b in zip(jax.tree.leaves(frozen["reward"]), jax.tree.leaves(rm), strict=True))
    for a, b in zip(jax.tree.leaves(state.policy.params), jax.tree.leaves(ref), strict=True):
        pointer = lambda x: x.addressable_shards[0].data.unsafe_buffer_pointer()
        assert a.sharding == b.sharding and pointer(a) != pointer(b)  # the policy is a copy, to train
        np.testing.assert_array_equal(a, b)
    head = state.value.params["head"]
    np.testing.assert_allclose(head["kernel"], 2.0 * rm["head"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(head["bias"], 2.0 * rm["head"]["bias"] + 0.5, rtol=1e-6)


def test_a_smaller_token_table_is_grown_into_the_models_sharding_and_a_fitting_one_is_not_copied():
    cfg = config()
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    policy = ppo.ppo_models(cfg).policy
    x = jnp.zeros((1, P + N), jnp.int32)
    params = common.random_params(policy, x, seed=3)
    fitting = jax.device_put(params, reward.param_shardings(policy, mesh, P + N))
    same = common.grow_to(policy, fitting, mesh, P + N)
    assert all(a is b for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(fitting), strict=True))
    small = {**params, "wte": params["wte"][:60]}  # a checkpoint of 60 tokens for a model of 64
    grown = common.grow_to(policy, small, mesh, P + N)
    assert grown["wte"].shape == (64, 32) and grown["wte"].sharding == fitting["wte"].sharding
    np.testing.assert_array_equal(grown["wte"][:60], params["wte"][:60])  # the trained rows are kept exactly
    assert 0 < float(jnp.std(grown["wte"][60:])) < 0.05  # new rows drawn at the model's init scale (0.02)
