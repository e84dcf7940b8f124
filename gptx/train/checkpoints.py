"""Every checkpoint save and restore of gptx: the only module that builds an orbax `CheckpointManager`.

A run's checkpoints live in WORKDIR/checkpoints/<step>/ with three items:

  state         the train state pytree (model params, optimizer state, step; PPO: both models, beta, iteration)
  data          the grain iterator position (absent in converted checkpoints and data-less runs)
  fingerprints  per-leaf checksums of the state's bits (gptx/train/integrity.py), verified on every restore

Resuming takes the newest step that reads cleanly and matches its fingerprints. A damaged step (unreadable
files, a corrupt data position, a fingerprint mismatch) is moved to WORKDIR/damaged_checkpoints/ with one warning
naming it and why, and the next older step is tried; a checkpoint whose shapes do not fit the model is a
ConfigError, never "damage".

Restores always go straight into the target shardings from gptx/mesh.py: a full state restores into the
shardings of the state `init_fn` builds; params alone (a pretrained body, an SFT policy, a reward model) are read
with a partial restore, so optimizer moments are never loaded, and each parameter lands in the sharding of the
model that will use it. Only a parameter whose shape differs from the target's (a token table the target grows
with new special tokens) is read replicated and grown by `merge_params`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gptx import fs
from gptx import mesh as mesh_lib
from gptx.errors import CheckpointError, ConfigError
from gptx.train import integrity

STATE, DATA, PRINTS = "state", "data", "fingerprints"


def directory(workdir: str) -> str:
    return fs.join(fs.absolute(workdir), "checkpoints")


def manager(
    workdir: str, *, keep: int | None = None, async_save: bool = False, partial: bool = False
) -> ocp.CheckpointManager:
    """The orbax manager of WORKDIR/checkpoints.

    keep: how many steps to keep (None: all). partial: restore-only manager whose `state` item reads a subset
    of the saved tree (`restore_params`); it never writes, so it creates nothing.
    """
    handlers = {
        STATE: ocp.PyTreeCheckpointHandler() if partial else ocp.StandardCheckpointHandler(),
        DATA: grain.checkpoint.CheckpointHandler(),
        PRINTS: ocp.JsonCheckpointHandler(),
    }
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=not partial)
    fs.prepare(workdir)  # gcsfs configured before orbax's epath makes (and caches) its filesystem
    return ocp.CheckpointManager(directory(workdir), options=options, item_handlers=handlers)


def all_steps(workdir: str) -> list[int]:
    """The saved steps of WORKDIR/checkpoints, ascending ([] when there is none)."""
    if not fs.isdir(directory(workdir)):
        return []
    with manager(workdir, partial=True) as mngr:
        return sorted(mngr.all_steps())


def latest_step(workdir: str) -> int | None:
    steps = all_steps(workdir)
    return steps[-1] if steps else None


def _require_step(workdir: str, step: int | None) -> int:
    steps = all_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory(workdir)}: train (or convert) first")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint of step {step} in {directory(workdir)} (saved: {steps})")
    return step


# ------------------------------------------------------------------------------------------------------------
# Full train states


def abstract_state(init_fn: Callable[[jax.Array], Any], mesh: Mesh, rng: jax.Array) -> tuple[Any, Any]:
    """(shardings, abstract unboxed state carrying them) of the state `init_fn` builds, without allocating."""
    boxed = jax.eval_shape(init_fn, rng)
    shardings = mesh_lib.tree_shardings(mesh, boxed)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), mesh_lib.strip_annotations(boxed), shardings
    )
    return shardings, target


def init_state(init_fn: Callable[[jax.Array], Any], mesh: Mesh, rng: jax.Array) -> Any:
    """A fresh state built directly in the shardings of its logical annotations (never whole on one device).

    Arrays that init_fn closes over (a restored checkpoint's params) enter the jit as arguments, in their own
    shardings: as constants of the program they would be embedded in it whole, on every device."""
    shardings, _ = abstract_state(init_fn, mesh, rng)
    closed, shapes = jax.make_jaxpr(lambda r: nn.meta.unbox(init_fn(r)), return_shape=True)(rng)
    tree = jax.tree.structure(shapes)
    run = lambda consts, r: jax.tree.unflatten(tree, jax.core.eval_jaxpr(closed.jaxpr, consts, r))
    return jax.jit(run, out_shardings=shardings)(closed.consts, rng)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any = None) -> None:
    """Saves `state`, its fingerprints and the grain iterator position (when there is one) as `step`; async if
    the manager is (the fingerprints are computed on device before the write starts)."""
    items = {STATE: ocp.args.StandardSave(state), PRINTS: ocp.args.JsonSave(integrity.fingerprints(state))}
    if data_iter is not None:
        items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
    mngr.save(step, args=ocp.args.Composite(**items))


class _Damaged(Exception):
    """A step that cannot be trusted: its files do not read, or its fingerprints do not match."""


def restore_or_init(
    mngr: ocp.CheckpointManager, init_fn: Callable[[jax.Array], Any], mesh: Mesh, rng: jax.Array, data_iter: Any = None
) -> Any:
    """The newest checkpoint that reads cleanly (state and data position, restored into `data_iter`), else a
    fresh sharded init. Damaged steps are moved aside with a warning; if every step is damaged, CheckpointError."""
    _, target = abstract_state(init_fn, mesh, rng)
    steps = sorted(mngr.all_steps(), reverse=True)
    mesh_lib.agree_across_processes(steps[0] if steps else None, "checkpoint step to resume from")
    damaged = []
    for step in steps:
        try:
            return _restore_verified(mngr, step, target, data_iter)
        except _Damaged as e:
            damaged.append(_set_aside(mngr, step, str(e)))
    if damaged:
        raise CheckpointError(
            f"no checkpoint in {mngr.directory} reads cleanly; the damaged ones were moved to {', '.join(damaged)}. "
            "Rerun to start afresh, or move a step back by hand"
        )
    return init_state(init_fn, mesh, rng)


def _restore_verified(mngr: ocp.CheckpointManager, step: int, target: Any, data_iter: Any) -> Any:
    """The state of `step`, checked against its fingerprints; _Damaged (agreed by all processes) if it is not
    what was saved, ConfigError if its shapes do not fit the model."""
    logging.info("restoring checkpoint at step %d", step)
    problem, state = None, None
    try:
        items = mngr.item_metadata(step)
        _check_fits(items[STATE] if _has(items, STATE) else None, target, f"{mngr.directory}/{step}")
        args = {STATE: ocp.args.StandardRestore(target)}
        # A checkpoint without a data position (e.g. converted by `gptx.main convert`) starts a fresh iterator.
        if data_iter is not None and _has(items, DATA):
            args[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
        if _has(items, PRINTS):
            args[PRINTS] = ocp.args.JsonRestore()
        restored = mngr.restore(step, args=ocp.args.Composite(**args))
        state = restored[STATE]
        if PRINTS in args:
            problem = integrity.mismatch(state, restored[PRINTS])
    except ConfigError:
        raise
    except Exception as e:  # unreadable or inconsistent files: any error of the storage layers
        problem = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
    if not _all_processes_ok(problem is None):
        raise _Damaged(problem or "another process could not read it")
    return state


def has_data_position(workdir: str) -> bool:
    """Whether the latest step of WORKDIR/checkpoints holds a data position: a run to resume. A step without one
    (weights converted by `gptx.main convert`) is a starting point, like an init_from run."""
    step = latest_step(workdir)
    if step is None:
        return False
    # The item's directory, not its metadata: a damaged step must still answer (the restore then sets it aside).
    return fs.isdir(fs.join(directory(workdir), str(step), DATA))


def _has(items: Any, name: str) -> bool:
    """Whether a step holds the item (some handlers record no metadata, so its value may be None)."""
    return name in items


def _check_fits(saved: Any, target: Any, where: str) -> None:
    """ConfigError if the saved state's leaf shapes are not the target's (the model changed, not the files)."""
    tree = getattr(saved, "tree", saved)
    if tree is None:
        raise ValueError("no state metadata")
    want = {integrity.path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(target)}
    for path, meta in jax.tree_util.tree_leaves_with_path(tree):
        name = integrity.path_name(path)
        if name in want and tuple(meta.shape) != want[name]:
            raise ConfigError(
                f"{where} holds {name} of shape {tuple(meta.shape)}, the config implies {want[name]}: resume with "
                "the settings the run was saved with, or start a new workdir"
            )


def _all_processes_ok(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _set_aside(mngr: ocp.CheckpointManager, step: int, why: str) -> str:
    """Moves a damaged step out of the manager's sight (process 0), warns once, returns where it went."""
    dst = integrity.move_aside(str(mngr.directory), step) if jax.process_index() == 0 else ""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"gptx: checkpoint {step} set aside")
    mngr.reload()
    logging.warning("checkpoint step %d is damaged (%s); moved to %s, trying an older one", step, why, dst)
    return dst or f"damaged_checkpoints/{step}-*"


def restore_state(
    workdir: str, init_fn: Callable[[jax.Array], Any], mesh: Mesh, rng: jax.Array, step: int | None = None
) -> Any:
    """The full state of checkpoint `step` (None: the latest) in WORKDIR, in the shardings `init_fn` implies."""
    step = _require_step(workdir, step)
    _, target = abstract_state(init_fn, mesh, rng)
    with manager(workdir, partial=True) as mngr:
        restore = ocp.args.PyTreeRestore(item=target, restore_args=_restore_args(target))
        return mngr.restore(step, args=ocp.args.Composite(**{STATE: restore}))[STATE]


# ------------------------------------------------------------------------------------------------------------
# Parameters alone


def saved_tree(workdir: str, step: int) -> dict[str, Any]:
    """The metadata tree (shapes, dtypes) of a checkpoint's state item."""
    with manager(workdir, partial=True) as mngr:
        meta = mngr.item_metadata(step)[STATE]
    return getattr(meta, "tree", meta)


def restore_params(
    workdir: str, mesh: Mesh, target: Any, *, step: int | None = None, key: str = "", strict: bool = True
) -> tuple[Any, int]:
    """(params, step) of checkpoint `step` (None: the latest) in WORKDIR, without its optimizer state.

    target: the logically annotated params the caller's model has (e.g. `jax.eval_shape` of its `init`); each
    saved parameter is restored in that parameter's sharding on `mesh`. A saved parameter whose shape differs
    from the target's (a smaller token table) is restored replicated, for `merge_params` to grow. key: the
    sub-state holding the params ("policy" of a PPO run); "" reads `params`, or a PPO run's policy. strict: the
    saved params must have the target's names and shapes (else a ValueError naming the first that differs);
    callers that grow or merge (`merge_params`) pass False.
    """
    candidates = [_require_step(workdir, step)] if step is not None else sorted(all_steps(workdir), reverse=True)
    if not candidates:
        _require_step(workdir, None)  # FileNotFoundError naming the directory
    problems = []
    for candidate in candidates:
        try:
            return _restore_params_verified(workdir, mesh, target, candidate, key, strict), candidate
        except _Damaged as e:
            problems.append(f"step {candidate}: {e}")
            logging.warning("checkpoint step %d of %s is damaged (%s); trying an older one", candidate, workdir, e)
    raise CheckpointError(f"no checkpoint in {directory(workdir)} reads cleanly: {'; '.join(problems)}")


def _restore_params_verified(workdir: str, mesh: Mesh, target: Any, step: int, key: str, strict: bool) -> Any:
    """The params of `step`, checked against its fingerprints; _Damaged if its files do not read or match."""
    problem = None
    try:
        saved = saved_tree(workdir, step)
        if not key and "params" not in saved and "policy" in saved:
            key = "policy"  # a PPO run's workdir: its policy
        node = saved.get(key, {}) if key else saved
        if "params" not in node:
            raise FileNotFoundError(
                f"{directory(workdir)}/{step} has no {(key + '/') if key else ''}params: is it the right run's workdir?"
            )
        wanted = _params_target(node["params"], target, mesh, strict)
        item = {key: {"params": wanted}} if key else {"params": wanted}
        args = {STATE: ocp.args.PyTreeRestore(item=item, restore_args=_restore_args(item), partial_restore=True)}
        with manager(workdir, partial=True) as mngr:
            if _has(mngr.item_metadata(step), PRINTS):
                args[PRINTS] = ocp.args.JsonRestore()
            restored = mngr.restore(step, args=ocp.args.Composite(**args))
        if PRINTS in args:
            problem = integrity.mismatch(restored[STATE], restored[PRINTS])
    except (ConfigError, FileNotFoundError):
        raise
    except Exception as e:  # unreadable files
        problem = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
    if not _all_processes_ok(problem is None):
        raise _Damaged(problem or "another process could not read it")
    logging.info("restored params of step %d from %s", step, workdir)
    state = restored[STATE]
    return (state[key] if key else state)["params"]


def abstract_params(model: nn.Module, *inputs: Any) -> Any:
    """The logically annotated, abstract params of `model` (its `init` on `inputs` under jax.eval_shape): the
    `target` of restore_params."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]


def _params_target(saved: Any, target: Any, mesh: Mesh, strict: bool) -> Any:
    """ShapeDtypeStructs of the saved params: the target's sharding where the shapes agree, else replicated."""
    shardings = mesh_lib.tree_shardings(mesh, target)
    flat_sh = {_path_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
    values = jax.tree_util.tree_leaves_with_path(mesh_lib.strip_annotations(target))
    flat_shape = {_path_name(p): tuple(x.shape) for p, x in values}
    replicated = NamedSharding(mesh, PartitionSpec())

    def leaf(path, meta):
        name = _path_name(path)
        same = flat_shape.get(name) == tuple(meta.shape)
        if strict and not same:
            raise ConfigError(
                f"checkpoint parameter {name} has shape {tuple(meta.shape)}, config.model implies "
                f"{flat_shape.get(name, 'no such parameter')}: pass the --config.model.* values it was trained with"
            )
        sharding = flat_sh[name] if same else replicated
        return jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=sharding)

    wanted = jax.tree_util.tree_map_with_path(leaf, saved)
    missing = sorted(set(flat_shape) - {_path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(wanted)})
    if strict and missing:
        raise ConfigError(
            f"the checkpoint has no parameter {missing[0]} (of {len(missing)} missing): does config.model match it?"
        )
    return wanted


def _restore_args(target: Any) -> Any:
    """Restore each array straight into its target sharding, shape and dtype."""
    return jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), target
    )


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def grow_embedding(wte: jax.Array, vocab_size: int, rng: jax.Array, std: float = 0.02) -> jax.Array:
    """The token table with rows appended up to `vocab_size` (new special tokens), drawn from N(0, std²);
    the existing rows are kept exactly."""
    n, d = wte.shape
    if n > vocab_size:
        raise ValueError(f"the pretrained embedding has {n} rows, more than config.model.vocab_size={vocab_size}")
    if n == vocab_size:
        return wte
    new = std * jax.random.normal(rng, (vocab_size - n, d), wte.dtype)
    return jnp.concatenate([wte, new], axis=0)


def merge_params(boxed: Any, pretrained: Any, rng: jax.Array, init_std: float) -> Any:
    """`boxed` (annotated params of a model being initialised) with values from `pretrained`; wte is grown when
    the checkpoint's vocabulary is smaller. A missing or differently shaped parameter is a ValueError naming it."""

    def take(path, box):
        name = _path_name(path)
        value = pretrained
        for k in path:
            if k.key not in value:
                raise ValueError(f"pretrained checkpoint has no parameter {name}: does config.model match it?")
            value = value[k.key]
        annotated = isinstance(box, nn.LogicallyPartitioned)
        want = box.value.shape if annotated else box.shape
        if name == "wte":
            value = grow_embedding(jnp.asarray(value), want[0], rng, init_std)
        if tuple(value.shape) != tuple(want):
            raise ValueError(
                f"pretrained {name} has shape {tuple(value.shape)}, config.model implies {tuple(want)}: pass the "
                "--config.model.* values the checkpoint was trained with"
            )
        value = jnp.asarray(value, box.value.dtype if annotated else box.dtype)
        return box.replace_boxed(value) if annotated else value

    return jax.tree_util.tree_map_with_path(take, boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
