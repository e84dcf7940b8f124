"""Ahead-of-time checks: compile a train step for a target topology without its hardware, report memory.

`python -m gptx.main aot --config=configs/gpt3.py:1.3b --workdir=/tmp/aot --config.aot.topology=v5e:4x4`
builds the config's train step on the mesh the run would use and reports, per device, the bytes of parameters,
optimizer state, batch and activations, and whether they fit the chip: an OOM shows up before a pod is rented.

How, best first:
  compiled  TPU targets (`v4:2x2x2`, `v5e:4x4`, `v5p:...`, `v6e:...`) with libtpu installed (or TPU_LIBRARY_PATH
            pointing at a libtpu.so): compile-only TPU devices from `jax.experimental.topologies` and the real TPU
            compiler, running on this CPU. `cpu:N` compiles with XLA:CPU for N simulated host devices.
  abstract  no compiler for the target (GPUs such as `h100:2x8`, `abstract:N`, TPUs without libtpu): the step is
            traced and lowered on an `AbstractMesh`, which checks every sharding; parameter and optimizer bytes are
            exact (shard shapes), activations are the residuals the backward pass keeps, split over batch shards.

A config for the `ppo` step (configs/ppo.py, or any config with --config.rlhf.stage=ppo) checks InstructGPT's PPO
iteration instead (gptx/rlhf/aot.py): policy, reference, value and reward model, the reward and value models of
their own size (config.rlhf.reward_model), scoring and the update compiled as `ppo` runs them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec

from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx.config import ConfigError
from gptx.train import checkpoints, lm, loop, pretrain
from gptx.train import step as step_lib
from gptx.train.state import lr_schedule

GIB = 1024**3
TPU_CHIPS = ("v4", "v5e", "v5p", "v6e")
# Memory per device in GiB, nominal from the vendors' data sheets (a TPU v4/v5p device is one megacore chip).
DEVICE_MEMORY_GIB = {
    "v4": 32,
    "v5e": 16,
    "v5p": 95,
    "v6e": 32,
    "a100": 80,
    "h100": 80,
    "h200": 141,
    "b200": 180,
}
REPORT = "aot_report.json"
BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids")  # int32 [B, T]; `weights` is float32 [B, T]


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed `config.aot.topology`: where the run would go."""

    spec: str
    chip: str  # "v5e", "h100", "cpu", "abstract"
    num_devices: int
    device_memory: int  # bytes per device; 0: unknown

    @property
    def is_tpu(self) -> bool:
        return self.chip in TPU_CHIPS


def parse_topology(spec: str, num_slices: int = 1, memory_gib: float = 0.0) -> Target:
    """`v5e:4x4` (TPU chips, per slice), `h100:2x8` or `h100:16` (GPUs), `cpu:N`, `abstract:N` -> Target."""
    m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", spec.strip().lower())
    if not m:
        raise ConfigError(
            f"config.aot.topology={spec!r} is not CHIP:SHAPE, e.g. v5e:4x4, v4:2x2x2, h100:2x8, cpu:8, abstract:16"
        )
    chip, shape = m.group(1), [int(n) for n in m.group(2).split("x")]
    if chip not in (*DEVICE_MEMORY_GIB, "cpu", "abstract"):
        known = ", ".join([*DEVICE_MEMORY_GIB, "cpu", "abstract"])
        raise ConfigError(f"config.aot.topology={spec!r}: unknown chip {chip!r} (known: {known})")
    if num_slices < 1 or (num_slices > 1 and chip not in TPU_CHIPS):
        raise ConfigError(f"config.aot.num_slices={num_slices} must be 1, or more for a TPU topology")
    n = math.prod(shape) * num_slices
    memory = memory_gib or DEVICE_MEMORY_GIB.get(chip, 0)
    return Target(spec=spec, chip=chip, num_devices=n, device_memory=int(memory * GIB))


@dataclasses.dataclass
class MemoryReport:
    """Bytes per device of one train step of `model` on `topology`; `method` says where the figures come from."""

    model: str
    topology: str
    method: str  # "compiled (tpu)", "compiled (cpu)" or "abstract"
    note: str
    num_devices: int
    mesh: dict[str, int]
    num_params: int
    param_bytes: int  # exact, from shard shapes
    optimizer_bytes: int  # exact, from shard shapes
    batch_bytes: int  # exact, from shard shapes
    activation_bytes: (
        int  # compiled: the compiler's temporaries (activations, gradients, workspace); abstract: residuals
    )
    gradient_bytes: int  # abstract: one parameter-sized gradient; compiled: inside activation_bytes (0 here)
    total_bytes: int
    device_memory: int  # 0: unknown
    compile_s: float
    compiler: dict[str, int] = dataclasses.field(default_factory=dict)  # memory_analysis() fields when compiled
    out_of_memory: bool = False  # the target's compiler refused the step
    parts: dict[str, str] = dataclasses.field(default_factory=dict)  # further lines of the table (PPO: per model)
    model_bytes: dict[str, int] = dataclasses.field(default_factory=dict)  # PPO: parameter bytes of each model

    @property
    def fits(self) -> bool | None:
        if self.out_of_memory:
            return False
        return None if not self.device_memory else self.total_bytes <= self.device_memory

    def table(self) -> str:
        """A human-readable table, one line per figure, bytes per device."""
        mesh = " x ".join(f"{k} {v}" for k, v in self.mesh.items())
        rows = [
            f"{self.model} ({self.num_params / 1e6:,.1f}M parameters) on {self.topology}: {self.num_devices} devices, "
            f"mesh {mesh}; {self.method} in {self.compile_s:.1f}s. Per device:",
            f"  parameters   {_size(self.param_bytes)}",
            f"  optimizer    {_size(self.optimizer_bytes)}",
            f"  batch        {_size(self.batch_bytes)}",
        ]
        if self.compiler:
            rows.append(
                f"  laid out     {_size(self.compiler['argument'])} (state and batch as the compiler lays them out)"
            )
        if self.gradient_bytes:
            rows.append(f"  gradients    {_size(self.gradient_bytes)} (estimate: one parameter-sized buffer)")
        if self.compiler or (self.out_of_memory and not self.gradient_bytes):
            what = "the compiler's temporaries: saved activations, gradients, workspace"
        else:
            what = "estimate: the residuals the backward pass keeps"
        rows.append(f"  activations  {_size(self.activation_bytes)} ({what})")
        limit = f" of {_size(self.device_memory).strip()}" if self.device_memory else ""
        verdict = {True: "fits", False: "DOES NOT FIT", None: "device memory unknown"}[self.fits]
        rows.append(f"  total        {_size(self.total_bytes)}{limit}: {verdict}")
        rows += [f"  {name:<12} {line}" for name, line in self.parts.items()]
        if self.note:
            rows.append(f"  note: {self.note}")
        return "\n".join(rows)


def _size(n: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:8.2f} {unit}"
    return f"{n:8d} B"


def _per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs carrying shardings (the largest shard per leaf)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


def abstract_batch(cfg: ml_collections.ConfigDict, mesh: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """The global LM batch [B, T] as ShapeDtypeStructs, sharded over the data-parallel axes."""
    b, t = cfg.train.batch_size, config_lib.seq_len(cfg)
    sharding = mesh_lib.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=sharding) for k in BATCH_KEYS}
    batch["weights"] = jax.ShapeDtypeStruct((b, t), jnp.float32, sharding=sharding)
    return batch


def _step_and_state(cfg: ml_collections.ConfigDict, mesh: Any, key: jax.ShapeDtypeStruct):
    """(jitted train step with the loop's shardings, abstract state, abstract batch, abstract rng, model).

    `key` is an abstract PRNG key: under a mesh of compile-only devices nothing may run, not even jax.random.key.
    """

    model, init_fn = pretrain.make_model(cfg)
    shardings, state = checkpoints.abstract_state(init_fn, mesh, key)
    batch = abstract_batch(cfg, mesh)
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, PartitionSpec()))
    train_step = step_lib.make_train_step(lm.loss(model), grad_accum=cfg.train.grad_accum, lr_fn=lr_schedule(cfg.train))
    jstep = loop.jit_step(train_step, shardings, batch["inputs"].sharding, mesh)  # exactly the loop's step
    return jstep, state, batch, rng, model


def _activation_residuals(cfg: ml_collections.ConfigDict, model: Any, state: Any, batch: dict, key: Any) -> int:
    """Global bytes of the residuals the backward pass keeps (after remat), excluding the inputs themselves."""
    from jax._src.ad_checkpoint import saved_residuals  # the list that jax.ad_checkpoint.print_saved_residuals prints

    def loss(params, batch, key):
        return lm.lm_loss_sum(params, batch, key, model)[0]

    micro = cfg.train.grad_accum
    residuals = saved_residuals(loss, _unsharded(state.params), _unsharded(batch), _unsharded(key))
    total = sum(
        math.prod(a.shape) * a.dtype.itemsize for a, why in residuals if not why.startswith("from the argument")
    )
    return total // micro  # micro-batches run one after another; each keeps 1/grad_accum of the batch's residuals


def _unsharded(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _compiler_stats(compiled: Any) -> dict[str, int]:
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    names = ("argument", "output", "alias", "temp", "generated_code")
    return {n: int(getattr(stats, f"{n}_size_in_bytes", 0)) for n in names}


def _compile(lowered: Any) -> tuple[dict[str, int], str]:
    """(memory_analysis() fields, "") or, when the target compiler runs out of device memory, ({}, its message)."""
    try:
        return _compiler_stats(lowered.compile()), ""
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return {}, str(e).splitlines()[0]


def _temporaries_in(error: str) -> int:
    """The bytes of HLO temporaries an out-of-memory message states (XLA's 'G' is GiB), or 0."""
    m = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", error)
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2))) if m else 0


def _totals(exact: dict[str, int], compiler: dict[str, int], error: str, residuals: Any) -> tuple[int, int, int]:
    """(gradient, activation, total) bytes per device: the compiler's figures when it compiled the step or refused it
    for lack of memory (its temporaries include the gradients), else exact state + estimated activations."""
    if compiler:
        return 0, compiler["temp"], compiler["argument"] + compiler["output"] - compiler["alias"] + compiler["temp"]
    temporaries = _temporaries_in(error)
    if temporaries:
        return 0, temporaries, sum(exact.values()) + temporaries
    gradients, activations = exact["param_bytes"], residuals()
    return gradients, activations, sum(exact.values()) + gradients + activations


def analyze(
    cfg: ml_collections.ConfigDict, target: Target, devices: Sequence[Any] | None = None, note: str = ""
) -> MemoryReport:
    """Compiles (devices given) or abstractly lowers (devices None) the train step of `cfg` for `target`.

    Nothing of the model's size is allocated: parameters, optimizer state and batch are ShapeDtypeStructs.
    """
    config_lib.validate(cfg, target.num_devices)
    sizes = mesh_lib.resolve_mesh_shape(cfg.mesh, target.num_devices)
    mesh = (
        mesh_lib.make_mesh(cfg.mesh, devices=list(devices))
        if devices
        else mesh_lib.abstract_mesh(cfg.mesh, target.num_devices)
    )
    key = jax.eval_shape(jax.random.key, 0)
    start = time.perf_counter()
    with mesh_lib.activation_rules(mesh):
        jstep, state, batch, rng, model = _step_and_state(cfg, mesh, key)
        platforms = None if devices else ("tpu" if target.is_tpu or target.chip == "abstract" else "cuda",)
        lowered = jstep.trace(state, batch, rng).lower(lowering_platforms=platforms)
        compiler, error = _compile(lowered) if devices else ({}, "")
    exact = dict(
        param_bytes=_per_device_bytes(state.params),
        optimizer_bytes=_per_device_bytes(state.opt_state) + _per_device_bytes(state.step),
        batch_bytes=_per_device_bytes(batch),
    )
    method = "abstract"
    if devices:
        method = f"compiled ({devices[0].platform})" + (": out of memory" if error else "")
    batch_shards = sizes["data"] * sizes["fsdp"]
    gradients, activations, total = _totals(
        exact, compiler, error, lambda: _activation_residuals(cfg, model, state, batch, key) // batch_shards
    )
    return MemoryReport(
        model=cfg.model.name,
        topology=target.spec,
        method=method,
        note="; ".join(x for x in (note, error) if x),
        num_devices=target.num_devices,
        mesh=sizes,
        num_params=sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)),
        **exact,
        activation_bytes=int(activations),
        gradient_bytes=gradients,
        total_bytes=int(total),
        device_memory=target.device_memory,
        compile_s=time.perf_counter() - start,
        compiler=compiler,
        out_of_memory=bool(error),
    )


def tpu_devices(target: Target, num_slices: int = 1) -> list[Any]:
    """Compile-only devices of a TPU topology (needs libtpu; no TPU). Raises RuntimeError without libtpu."""
    from jax.experimental import topologies

    # libtpu asks the cloud metadata server who it runs on; here it runs on no TPU at all.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    name = target.spec.strip().lower()
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name, num_slices=num_slices).devices)


def cpu_devices(n: int) -> list[Any]:
    """n host CPU devices: asks for them before the CPU backend starts; fails if it already started with fewer."""
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_num_cpu_devices", n)
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise ConfigError(
            f"config.aot.topology=cpu:{n} needs {n} host devices but this process has {len(devices)}; "
            f"run the aot command in a fresh process, or set XLA_FLAGS=--xla_force_host_platform_device_count={n}"
        )
    return devices[:n]


def target_devices(target: Target, num_slices: int = 1) -> tuple[list[Any] | None, str]:
    """(devices to compile for, or None for the abstract path; a note on why when falling back)."""
    if target.chip == "cpu":
        return cpu_devices(target.num_devices), ""
    if target.is_tpu:
        try:
            return tpu_devices(target, num_slices), ""
        except (RuntimeError, NotImplementedError) as e:
            first = str(e).splitlines()[0][:160]
            return None, f"no TPU compiler here ({first}); install libtpu or set TPU_LIBRARY_PATH to compile"
    return None, f"no compiler for {target.chip} without the hardware: figures from abstract evaluation"


def run(cfg: ml_collections.ConfigDict, workdir: str, analyze_fn=None) -> MemoryReport:
    """The `aot` command: analyze config.aot.topology, print the table, write WORKDIR/aot_report.json.

    analyze_fn: what to compile, `analyze` (the LM train step) by default; `gptx.rlhf.aot.analyze` for PPO (the
    caller picks it, so this module never imports gptx.rlhf, which imports it).
    Raises ConfigError when the step does not fit the device memory, so scripts can stop before renting a pod.
    """
    a = cfg.aot
    if not a.topology:
        raise ConfigError("config.aot.topology is required, e.g. --config.aot.topology=v5e:4x4 (or h100:2x8, cpu:8)")
    target = parse_topology(a.topology, a.num_slices, a.device_memory_gib)
    devices, note = target_devices(target, a.num_slices)
    report = (analyze_fn or analyze)(cfg, target, devices, note)
    print(report.table())
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, REPORT), "w") as f:
        json.dump({**dataclasses.asdict(report), "fits": report.fits}, f, indent=1)
    if report.fits is False:
        raise ConfigError(
            f"{cfg.model.name} needs {report.total_bytes / GIB:.2f} GiB per device on {target.spec}, which has "
            f"{target.device_memory / GIB:.0f} GiB: shard more (config.mesh.fsdp), remat (config.model.remat), "
            "or shrink config.train.batch_size / raise config.train.grad_accum"
        )
    return report
