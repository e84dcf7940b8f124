"""The one training loop: restore-or-init, jitted steps on the mesh, logs, eval, checkpoints.

Every trainer (pretraining, fine-tuning, SFT, reward model, vision) is a `Trainer`: an init function, a pure
step function and a grain pipeline. The loop owns everything else, so resuming, logging and failure handling
behave the same for all of them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from gptx import flops as flops_lib
from gptx import mesh as mesh_lib
from gptx.train.logs import MetricWriter
from gptx.train.state import TrainState

Batch = dict[str, Any]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


@dataclasses.dataclass
class Trainer:
    """What a training job plugs into the loop.

    init_fn: rng -> TrainState whose params carry logical-axis annotations (as from `model.init`).
    train_step: pure (state, batch, rng) -> (state, metrics); metrics must include `loss`.
    train_data: grain pipeline yielding this process's share of each batch (numpy arrays [B_local, ...]).
    eval_step: optional pure (params, batch) -> (loss_sum, weight_sum).
    eval_data: optional callable returning a fresh iterable of eval batches.
    flops_per_step: model FLOPs of one optimizer step over the global batch, for MFU.
    tokens_per_step: tokens of one global batch, for tokens/s.
    """

    init_fn: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
    train_data: grain.IterDataset
    eval_step: Callable[[Any, Batch], tuple[jax.Array, jax.Array]] | None = None
    eval_data: Callable[[], Iterable[Batch]] | None = None
    flops_per_step: float = 0.0
    tokens_per_step: int = 0


@dataclasses.dataclass
class LoopResult:
    state: TrainState
    history: list[dict[str, float]]
    stopped_early: bool = False


class _StopSignal:
    """Turns SIGTERM (preemption, scancel) into a request to checkpoint and stop at the next step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no preemption saves
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self) -> bool:
        """All processes must stop at the same step, so multi-host runs take the OR over processes."""
        if jax.process_count() == 1:
            return self.requested
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))


def checkpoint_manager(workdir: str, keep: int, async_save: bool) -> ocp.CheckpointManager:
    """Orbax manager for WORKDIR/checkpoints holding `state` (model + optimizer) and `data` (grain iterator)."""
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        },
    )


def abstract_state(init_fn: Callable[[jax.Array], TrainState], mesh: Mesh, rng: jax.Array):
    """(shardings, abstract unboxed state with shardings) of the state `init_fn` builds, without allocating."""
    boxed = jax.eval_shape(init_fn, rng)
    shardings = mesh_lib.tree_shardings(mesh, boxed)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), mesh_lib.strip_annotations(boxed), shardings
    )
    return shardings, target


def restore_or_init(
    trainer: Trainer, mngr: ocp.CheckpointManager, mesh: Mesh, rng: jax.Array, data_iter: Any
) -> TrainState:
    """The latest checkpoint in the workdir (model, optimizer and data position), else a fresh sharded init."""
    shardings, target = abstract_state(trainer.init_fn, mesh, rng)
    latest = mesh_lib.agree_across_processes(mngr.latest_step(), "checkpoint step to resume from")
    if latest is None:
        init = jax.jit(lambda r: nn.meta.unbox(trainer.init_fn(r)), out_shardings=shardings)
        return init(rng)
    logging.info("restoring checkpoint at step %d", latest)
    items = {"state": ocp.args.StandardRestore(target)}
    # A checkpoint without a data position (e.g. converted by `gptx.main convert`) starts a fresh iterator.
    if "data" in mngr.item_metadata(latest):
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = mngr.restore(latest, args=ocp.args.Composite(**items))
    return restored["state"]


def restore_latest_state(
    init_fn: Callable[[jax.Array], TrainState], workdir: str, mesh: Mesh, rng: jax.Array
) -> TrainState:
    """The model and optimizer state of the latest checkpoint in WORKDIR/checkpoints, sharded on `mesh`."""
    mngr = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    step = mngr.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first")
    _, target = abstract_state(init_fn, mesh, rng)
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]


def restore_saved_state(workdir: str, mesh: Mesh, step: int | None = None) -> tuple[Any, int]:
    """(state, step) of checkpoint `step` (None: the latest) in WORKDIR/checkpoints, with the shapes and dtypes
    the checkpoint itself records (no model needed), replicated on `mesh`; callers reshard with device_put."""
    path = os.path.join(os.path.abspath(workdir), "checkpoints")
    mngr = ocp.CheckpointManager(path, item_handlers={"state": ocp.StandardCheckpointHandler()})
    step = mngr.latest_step() if step is None else step
    if step is None:
        mngr.close()
        raise FileNotFoundError(f"no checkpoint in {path}")
    meta = mngr.item_metadata(step)["state"]
    tree = getattr(meta, "tree", meta)
    replicated = NamedSharding(mesh, PartitionSpec())
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=replicated), tree)
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    mngr.close()
    return state, step


def train(trainer: Trainer, config, workdir: str, mesh: Mesh) -> LoopResult:
    """Runs `config.train.steps` optimizer steps in total (resuming from WORKDIR/checkpoints if present).

    Raises NonFiniteLossError, after the pending checkpoint writes finish, when the loss is NaN or inf;
    no checkpoint is written from the bad step on.
    """
    t = config.train
    os.makedirs(workdir, exist_ok=True)
    writer = MetricWriter(workdir)
    mngr = checkpoint_manager(workdir, t.keep_ckpts, t.async_ckpt)
    rng = jax.random.key(t.seed)
    init_rng, step_rng = jax.random.split(rng)
    data_iter = iter(trainer.train_data)
    replicated = NamedSharding(mesh, PartitionSpec())

    with mesh_lib.activation_rules(mesh), _StopSignal() as stop:
        state = restore_or_init(trainer, mngr, mesh, init_rng, data_iter)
        shardings = jax.tree.map(lambda x: x.sharding, state)
        start = int(state.step)

        def step_fn(state, batch, base_rng):
            # The rng is a function of the step, so a resumed run draws the same dropout masks.
            return trainer.train_step(state, batch, jax.random.fold_in(base_rng, state.step))

        batch_sharding = mesh_lib.batch_sharding(mesh)
        jstep = jax.jit(
            step_fn,
            in_shardings=(shardings, batch_sharding, replicated),
            out_shardings=(shardings, replicated),
            donate_argnums=(0,),
        )
        jeval = jax.jit(trainer.eval_step) if trainer.eval_step else None
        peak = flops_lib.peak_flops_per_device(t.peak_flops) * jax.device_count()

        history: list[dict[str, float]] = []
        pending: list[tuple[int, dict[str, jax.Array]]] = []
        timer = {"t": time.perf_counter(), "steps": 0}
        last_saved = start

        def flush() -> None:
            """Fetches pending metrics, stops on a non-finite loss, logs averages with throughput."""
            if not pending:
                return
            fetched = jax.device_get(pending)
            pending.clear()
            for step, m in fetched:
                if not math.isfinite(float(m["loss"])):
                    raise NonFiniteLossError(
                        f"loss is {float(m['loss'])} at step {step}; stopped. The last good checkpoint "
                        f"(step {mngr.latest_step()}) is kept in {workdir}/checkpoints"
                    )
            dt = time.perf_counter() - timer["t"]
            n = timer["steps"]
            row = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
            if n and dt > 0:
                row["steps_per_s"] = n / dt
                row["tokens_per_s"] = n * trainer.tokens_per_step / dt
                row["mfu"] = n * trainer.flops_per_step / dt / peak
            step = fetched[-1][0]
            writer.write(step, row)
            history.append({"step": step, **row})
            pbar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
            timer.update(t=time.perf_counter(), steps=0)

        def evaluate(step: int) -> None:
            if jeval is None or trainer.eval_data is None:
                return
            loss_sum = weight = 0.0
            for i, batch in enumerate(trainer.eval_data()):
                if i >= t.eval_batches:
                    break
                loss, w = jax.device_get(jeval(state.params, mesh_lib.put_batch(mesh, batch)))
                loss_sum, weight = loss_sum + float(loss), weight + float(w)
            if weight:
                row = {"eval_loss": loss_sum / weight}
                writer.write(step, row)
                history.append({"step": step, **row})

        def save(step: int) -> None:
            flush()  # never checkpoint a state whose loss was not finite
            mngr.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)
                ),
            )

        pbar = tqdm(
            total=t.steps,
            initial=start,
            disable=not t.progress or jax.process_index() != 0,
            dynamic_ncols=True,
        )
        stopped = False
        try:
            for step in range(start, t.steps):
                if (jax.process_count() == 1 or step % t.log_every == 0) and stop.agreed():
                    stopped = True
                    break
                batch = mesh_lib.put_batch(mesh, next(data_iter))
                state, metrics = jstep(state, batch, step_rng)
                done = step + 1
                pending.append((done, metrics))
                timer["steps"] += 1
                pbar.update(1)
                if step == start:
                    # Exclude compilation from throughput.
                    jax.block_until_ready(metrics)
                    timer.update(t=time.perf_counter(), steps=0)
                if done % t.log_every == 0 or done == t.steps:
                    flush()
                if done % t.eval_every == 0 or done == t.steps:
                    evaluate(done)
                if done % t.ckpt_every == 0 or done == t.steps:
                    save(done)
                    last_saved = done
            if stopped and last_saved != int(state.step):
                save(int(state.step))
            flush()
        finally:
            pbar.close()
            mngr.wait_until_finished()
            writer.close()
    return LoopResult(state=state, history=history, stopped_early=stopped)
