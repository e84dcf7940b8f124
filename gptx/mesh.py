"""THE mesh: device mesh, logical-axis rules, shardings and multi-host start-up.

Every trainer gets its shardings from here; no other module builds a `Mesh` or a `PartitionSpec` by hand.
Models annotate parameters and activations with logical axis names (`batch`, `embed`, `heads`, ...);
`LOGICAL_RULES` maps those names onto the three mesh axes:

  data    pure data parallelism (replicated parameters), usually across hosts/slices
  fsdp    data parallelism with parameters and optimizer state sharded along `embed` (ZeRO-3)
  tensor  Megatron-style tensor parallelism over heads, MLP width and vocabulary
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from gptx.config import MESH_AXES, resolve_mesh_shape  # pure-Python shape rules live with the config schema
from gptx.errors import ConfigError

# Logical axis -> mesh axes. Parameters: `embed` is FSDP-sharded, the wide dimensions are tensor-sharded.
# Activations: the batch is split over both data-parallel axes; `act_*` names keep activations' feature
# dimensions unsharded except where tensor parallelism produces them sharded (heads, mlp).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("positions", None),
    ("norm", None),
    ("layers", None),
    ("classes", None),  # classifier outputs (fine-tuning heads): small, replicated
    ("pixels", None),  # flattened image patches entering a ViT's patch embedding
    ("joint", None),  # CLIP's joint image-text embedding: small, replicated
)


def _env_says_multihost() -> bool:
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 or env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    # TPU pod slices list one hostname per worker.
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize_distributed(mesh_cfg: ml_collections.ConfigDict) -> bool:
    """Starts `jax.distributed` once when the config or the environment says the run spans hosts.

    Explicit `coordinator_address`/`num_processes`/`process_id` serve GPU clusters and CPU tests (with gloo
    collectives); TPU pods and SLURM are detected by JAX itself from the environment. Returns True if this
    process is part of a multi-process run.
    """
    explicit = bool(mesh_cfg.coordinator_address) or mesh_cfg.num_processes > 1
    wanted = mesh_cfg.multihost == "yes" or (mesh_cfg.multihost == "auto" and (explicit or _env_says_multihost()))
    if not wanted:
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {}
    if explicit:
        # CPU processes need gloo for cross-process collectives; accelerator backends ignore this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs = dict(
            coordinator_address=mesh_cfg.coordinator_address,
            num_processes=mesh_cfg.num_processes,
            process_id=mesh_cfg.process_id,
        )
    logging.info("jax.distributed.initialize(%s)", kwargs)
    jax.distributed.initialize(**kwargs)
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)  # process 0 tells the story; the others speak up only when wrong
    return True


def agree_across_processes(value: int | None, what: str) -> int | None:
    """Process 0's `value` (an int or None), after checking that every process holds the same.

    Each process reads e.g. the latest checkpoint step from its own view of the workdir; if the views differ
    (a workdir on each host's local disk), the processes would restore different states and hang.
    """
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    values = multihost_utils.process_allgather(np.asarray(-1 if value is None else value, np.int64))
    values = [None if v < 0 else int(v) for v in np.asarray(values).reshape(-1)]
    if len(set(values)) > 1:
        raise ConfigError(
            f"processes disagree on the {what}: {values} (by process); is the workdir on a filesystem all hosts share?"
        )
    return values[0]


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: list | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over all global devices (or `devices`).

    With `config.mesh.dcn_data` > 1 the `data` axis spans that many TPU slices (or, on platforms without
    slices, groups of processes) over the data-centre network, and `fsdp`/`tensor` stay on the fast links
    within one.
    """
    sizes = resolve_mesh_shape(mesh_cfg, len(devices) if devices else jax.device_count())
    shape = tuple(sizes[a] for a in MESH_AXES)
    dcn = int(mesh_cfg.get("dcn_data", 1))
    if dcn > 1:
        devices = devices or jax.devices()
        # Multi-slice TPU devices carry distinct slice_index; elsewhere each process is one unit of the slow network.
        slices = {getattr(d, "slice_index", None) for d in devices}
        try:
            device_array = mesh_utils.create_hybrid_device_mesh(
                (sizes["data"] // dcn, sizes["fsdp"], sizes["tensor"]),
                (dcn, 1, 1),
                devices,
                process_is_granule=len(slices) == 1,
                allow_split_physical_axes=True,
            )
        except ValueError as e:  # e.g. 1 slice where config.mesh.dcn_data says 2
            raise ConfigError(f"config.mesh.dcn_data={dcn}: {e}") from e
    elif devices is None or devices[0].platform == "tpu":
        # Topology-aware placement: tensor parallelism on the fastest links, data parallelism across hosts.
        device_array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    else:
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def abstract_mesh(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> AbstractMesh:
    """The mesh's axis sizes without devices: enough to trace and lower for a topology this machine lacks."""
    sizes = resolve_mesh_shape(mesh_cfg, num_devices)
    return AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES)


@contextlib.contextmanager
def activation_rules(mesh: Mesh | AbstractMesh) -> Iterator[None]:
    """Context in which `nn.with_logical_constraint` inside models resolves against `mesh`.

    Flax reads the mesh from `jax.sharding.get_abstract_mesh()`, which `jax.set_mesh` sets; without it the
    activation constraints would silently do nothing.
    """
    set_mesh = jax.sharding.use_abstract_mesh if isinstance(mesh, AbstractMesh) else jax.set_mesh
    with set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        yield


def logical_sharding(mesh: Mesh, logical_axes: tuple[str | None, ...]) -> NamedSharding:
    """NamedSharding for an array whose dimensions carry these logical names."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(logical_axes, LOGICAL_RULES))


def tree_shardings(mesh: Mesh, boxed_tree: Any) -> Any:
    """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` (as from `jax.eval_shape`
    of an init function); unannotated leaves (step counters, scalars) are replicated."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def strip_annotations(tree: Any) -> Any:
    """The values of a logically annotated tree, without applying sharding constraints (which
    `nn.meta.unbox` does under a mesh, and which only make sense inside jit)."""
    return jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.LogicallyPartitioned) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[B, T, ...] arrays: batch split over the data-parallel axes."""
    return logical_sharding(mesh, ("batch", "length"))


def put_batch(mesh: Mesh, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles global arrays from each process's share of a batch.

    Each process passes only the rows it loaded ([B / process_count, T]); the global batch is
    [B, T]. With one process this is a plain sharded device_put.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for name, x in local_batch.items():
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        spec = PartitionSpec(*sharding.spec[: x.ndim])
        out[name] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x, global_shape)
    return out


def shard_map_spec(
    mesh: Mesh | AbstractMesh, logical_axes: tuple[str | None, ...], shape: tuple[int, ...]
) -> PartitionSpec:
    """The `shard_map` in/out spec of an array of `shape` whose dimensions carry these logical names.

    Unlike a sharding constraint, a shard_map spec must split its dimension evenly, so a dimension the mesh
    axes do not divide (a batch of 1 in evaluation, 2 heads over tensor=4) is kept whole on every device.
    """
    spec = []
    for axes, size in zip(nn.logical_to_mesh_axes(logical_axes, LOGICAL_RULES), shape, strict=True):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        names = tuple(a for a in names if a in mesh.axis_names)
        split = math.prod(mesh.shape[a] for a in names)
        if not names or size % split:
            spec.append(None)
        else:
            spec.append(names[0] if len(names) == 1 else names)
    return PartitionSpec(*spec)
