"""Ahead-of-time memory check of one PPO iteration (the `aot` command for a config of the `ppo` step).

The iteration holds four models on one mesh: the trained policy and value model with their optimizer states, the
frozen reference and reward model; the reward and value models have their own shape (config.rlhf.reward_model).
Two programs run on them, compiled here exactly as `ppo` compiles them (gptx/rlhf/ppo.py `compile_steps`):

  score   one forward pass of each model over the rollout [rollout_batch, max_prompt_len + max_response_len]
  update  ppo_epochs x (rollout_batch / minibatch) minibatch steps of both trained models in one lax.scan

Per device: the bytes of each model's parameters and of the optimizer states (exact, from shard shapes), the
rollout, the compiler's temporaries of each program (compiled) or the residuals of one minibatch's backward pass
(abstract), and the peak of the two phases, where the frozen models stay resident during the update. Generation
holds the policy's KV cache instead, given in closed form.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gptx import aot
from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx.rlhf import ppo
from gptx.train import checkpoints


def _abstract(tree: Any, sharding_of) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_of(x)), tree)


def abstract_params(model, mesh, seq_len: int) -> Any:
    """A model's params as sharded ShapeDtypeStructs, as `restore_params` would place them."""
    boxed = checkpoints.abstract_params(model, np.zeros((1, seq_len), np.int32))  # numpy: no device runs it
    shardings = mesh_lib.tree_shardings(mesh, boxed)
    values = mesh_lib.strip_annotations(boxed)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), values, shardings)


def abstract_inputs(cfg: ml_collections.ConfigDict, models: ppo.Models, hp: ppo.PPOConfig, mesh, key) -> dict:
    """Everything the two programs take, as sharded ShapeDtypeStructs: state, frozen half, episodes, rollout."""
    r = cfg.rlhf
    b, p, n = r.rollout_batch, r.max_prompt_len, r.max_response_len
    init_fn = ppo.make_init_fn(models, cfg, None, None, p + n)
    state_shardings, state = checkpoints.abstract_state(init_fn, mesh, key)
    replicated = NamedSharding(mesh, PartitionSpec())
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
    frozen = {
        "ref": abstract_params(models.policy, mesh, p + n),
        "reward": abstract_params(models.value, mesh, p + n),
        "gain": scalar,
        "bias": scalar,
    }
    batch = mesh_lib.batch_sharding(mesh)
    episode = (
        jax.ShapeDtypeStruct((b, p), jnp.int32, sharding=batch),
        jax.ShapeDtypeStruct((b, p), jnp.bool_, sharding=batch),
        jax.ShapeDtypeStruct((b, n), jnp.int32, sharding=batch),
        jax.ShapeDtypeStruct((b, n), jnp.bool_, sharding=batch),
    )
    rollout, _ = jax.eval_shape(ppo.make_score_fn(models, hp), state, frozen, *episode)
    rollout = _abstract(rollout, lambda x: batch)
    ptx = None
    if hp.ptx_coef > 0:  # [epochs · minibatches, ptx_batch, T] pretraining batches
        shape = (hp.ppo_epochs * hp.n_minibatches, r.ptx_batch, config_lib.seq_len(cfg))
        sharding = mesh_lib.logical_sharding(mesh, (None, "batch", "length"))
        ptx = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding) for k in aot.BATCH_KEYS}
        ptx["weights"] = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
    return dict(shardings=state_shardings, state=state, frozen=frozen, episode=episode, rollout=rollout, ptx=ptx,
                rng=rng, kl=scalar)  # fmt: skip


def kv_cache_bytes(cfg: ml_collections.ConfigDict, policy_cfg, mesh_sizes: dict[str, int]) -> int:
    """Per device: the policy's KV cache while it samples a rollout (keys and values of every layer and head for
    prompt + response), split over the batch shards and, by heads, over `tensor`."""
    r = cfg.rlhf
    rows = math.ceil(r.rollout_batch / (mesh_sizes["data"] * mesh_sizes["fsdp"]))
    heads = math.ceil(policy_cfg.n_head / mesh_sizes["tensor"])
    itemsize = jnp.dtype(policy_cfg.dtype).itemsize
    return (
        2 * policy_cfg.n_layer * rows * heads * (r.max_prompt_len + r.max_response_len) * policy_cfg.head_dim * itemsize
    )


def _residuals(models: ppo.Models, hp: ppo.PPOConfig, x: dict, batch_shards: int) -> int:
    """Per device: the residuals one minibatch's backward pass keeps (abstract path)."""
    from jax._src.ad_checkpoint import saved_residuals

    mb = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((a.shape[0] // hp.n_minibatches, *a.shape[1:]), a.dtype), x["rollout"]
    )
    params = aot._unsharded((x["state"].policy.params, x["state"].value.params))
    ptx = None if x["ptx"] is None else jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), x["ptx"])
    loss = lambda p, m, t: ppo.ppo_losses(p, m, t, models, hp)[0]  # noqa: E731
    res = saved_residuals(loss, params, mb, ptx)
    kept = sum(math.prod(a.shape) * a.dtype.itemsize for a, why in res if not why.startswith("from the argument"))
    return kept // batch_shards


def _phase_total(stats: dict[str, int]) -> int:
    return stats["argument"] + stats["output"] - stats["alias"] + stats["temp"]


def compile_programs(cfg, models: ppo.Models, hp: ppo.PPOConfig, mesh, devices, platforms) -> tuple[dict, dict, list]:
    """(abstract inputs, memory_analysis() fields of each program compiled, out-of-memory messages) of the score
    and update programs, lowered (and compiled when there are devices) as `ppo` jits them."""
    stats, errors = {}, []
    with mesh_lib.activation_rules(mesh):
        x = abstract_inputs(cfg, models, hp, mesh, jax.eval_shape(jax.random.key, 0))
        steps = ppo.compile_steps(models, hp, mesh, x["shardings"])
        programs = {
            "score": steps.score.trace(x["state"], x["frozen"], *x["episode"]),
            "update": steps.update.trace(x["state"], x["rollout"], x["ptx"], x["rng"], x["kl"]),
        }
        for name, traced in programs.items():
            lowered = traced.lower(lowering_platforms=platforms)
            if devices:
                stats[name], error = aot._compile(lowered)
                errors += [f"{name}: {error}"] if error else []
    return x, stats, errors


def figures(cfg, models: ppo.Models, hp: ppo.PPOConfig, x: dict, stats: dict, sizes: dict[str, int]) -> dict:
    """Bytes per device: each model's params, optimizer states, rollout, activations, gradients and the total of
    each phase (score, update with the frozen models resident, generation with the KV cache)."""
    st, fr, per = x["state"], x["frozen"], aot._per_device_bytes
    params = {"policy": per(st.policy.params), "reference": per(fr["ref"]), "value": per(st.value.params),
              "reward": per(fr["reward"])}  # fmt: skip
    optimizer = per(st) - params["policy"] - params["value"]  # both optimizers, step counters, β
    rollout = per(x["rollout"]) + (per(x["ptx"]) if x["ptx"] is not None else 0)
    kv = kv_cache_bytes(cfg, models.policy.cfg, sizes)
    if _compiler(stats):
        frozen = params["reference"] + params["reward"]
        phases = {"score": _phase_total(stats["score"]), "update": _phase_total(stats["update"]) + frozen}
        activations, gradients = max(stats["score"]["temp"], stats["update"]["temp"]), 0
    else:
        gradients = params["policy"] + params["value"]
        activations = _residuals(models, hp, x, sizes["data"] * sizes["fsdp"])
        phases = {"update": sum(params.values()) + optimizer + rollout + gradients + activations}
    phases["generation"] = sum(params.values()) + optimizer + kv
    return dict(params=params, optimizer=optimizer, rollout=rollout, kv=kv, phases=phases, activations=activations,
                gradients=gradients)  # fmt: skip


def analyze(cfg: ml_collections.ConfigDict, target: aot.Target, devices=None, note: str = "") -> aot.MemoryReport:
    """Compiles (devices given) or abstractly lowers the PPO iteration's two programs for `target`."""
    config_lib.validate(cfg, target.num_devices)
    sizes = mesh_lib.resolve_mesh_shape(cfg.mesh, target.num_devices)
    mesh = (
        mesh_lib.make_mesh(cfg.mesh, list(devices)) if devices else mesh_lib.abstract_mesh(cfg.mesh, target.num_devices)
    )
    models = ppo.ppo_models(cfg)
    if models.value.cfg.n_head % sizes["tensor"]:
        raise config_lib.ConfigError(f"the reward model's {models.value.cfg.n_head} heads do not split over tensor")
    hp = ppo.PPOConfig.from_config(cfg.rlhf, eos_id=0)
    platforms = None if devices else ("tpu" if target.is_tpu or target.chip == "abstract" else "cuda",)
    start = time.perf_counter()
    x, stats, errors = compile_programs(cfg, models, hp, mesh, devices, platforms)
    f = figures(cfg, models, hp, x, stats, sizes)
    gib = lambda n: aot._size(n).strip()  # noqa: E731
    parts = {
        "models": ", ".join(f"{k} {gib(v)}" for k, v in f["params"].items()),
        "shapes": f"policy {_shape(models.policy.cfg)}; reward/value {_shape(models.value.cfg)}",
        "phases": ", ".join(f"{k} {gib(v)}" for k, v in f["phases"].items())
        + f" (generation holds the KV cache, {gib(f['kv'])}, instead of activations)",
    }
    count = lambda tree: sum(math.prod(a.shape) for a in jax.tree.leaves(tree))  # noqa: E731
    method = f"compiled ({devices[0].platform})" + (": out of memory" if errors else "") if devices else "abstract"
    return aot.MemoryReport(
        model=f"PPO: {cfg.model.name} policy + {models.value.cfg.name} reward/value model",
        topology=target.spec,
        method=method,
        note="; ".join(s for s in (note, *errors) if s),
        num_devices=target.num_devices,
        mesh=sizes,
        num_params=2 * (count(x["frozen"]["ref"]) + count(x["frozen"]["reward"])),  # four models, two shapes
        param_bytes=sum(f["params"].values()),
        optimizer_bytes=f["optimizer"],
        batch_bytes=f["rollout"],
        activation_bytes=int(f["activations"]),
        gradient_bytes=f["gradients"],
        total_bytes=int(max(f["phases"].values())),
        device_memory=target.device_memory,
        compile_s=time.perf_counter() - start,
        compiler=_compiler(stats),
        out_of_memory=bool(errors),
        parts=parts,
        model_bytes=f["params"],
    )


def _compiler(stats: dict[str, dict[str, int]]) -> dict[str, int]:
    """The update's memory_analysis() fields (what the table lays out) and each program's, prefixed."""
    if len(stats) < 2 or not all(stats.values()):
        return {}
    return {**stats["update"], **{f"{name}_{k}": v for name, st in stats.items() for k, v in st.items()}}


def _shape(m) -> str:
    return f"{m.n_layer} layers x {m.d_model} ({m.n_head} heads)"
