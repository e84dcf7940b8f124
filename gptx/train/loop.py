"""The one training loop: restore-or-init, steps on the mesh, logs, eval, checkpoints, clean stops.

Every trainer is a `Trainer`: an init function and either a pure step over batches of a grain pipeline
(pretraining, fine-tuning, SFT, reward model, vision) or a host-side iteration (PPO's rollout -> score ->
update). The loop owns everything else, so resuming, logging, progress and failure handling behave the same
for all of them.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from gptx import flops as flops_lib
from gptx import fs
from gptx import mesh as mesh_lib
from gptx.errors import NonFiniteLossError, Preempted
from gptx.train import checkpoints, integrity
from gptx.train.logs import MetricWriter

Batch = dict[str, Any]
Metrics = dict[str, Any]

__all__ = ["NonFiniteLossError", "Preempted", "Trainer", "LoopResult", "TrainLoop", "train"]


@dataclasses.dataclass
class Trainer:
    """What a training job plugs into the loop.

    init_fn: rng -> state whose params carry logical-axis annotations (as from `model.init`); the state has a
        `step` (optimizer steps, or PPO iterations) that the loop resumes from.
    train_step: pure (state, batch, rng) -> (state, metrics), jitted by the loop with the mesh's shardings;
        metrics must include `loss`.
    train_data: grain pipeline yielding this process's share of each batch (numpy arrays [B_local, ...]); its
        position is saved with every checkpoint.
    iteration: instead of train_step, a host-side (state, step, data_iterator) -> (state, metrics) that the
        loop calls as is (PPO); metrics must include `loss`.
    eval_step: optional pure (params, batch) -> (loss_sum, weight_sum).
    eval_data: optional callable returning a fresh iterable of eval batches.
    flops_per_step: model FLOPs of one optimizer step over the global batch, for MFU.
    tokens_per_step: tokens of one global batch, for tokens/s.
    progress_keys: metrics shown on the progress bar.
    """

    init_fn: Callable[[jax.Array], Any]
    train_step: Callable[[Any, Batch, jax.Array], tuple[Any, Metrics]] | None = None
    train_data: grain.IterDataset | None = None
    iteration: Callable[[Any, int, Any], tuple[Any, Metrics]] | None = None
    eval_step: Callable[[Any, Batch], tuple[jax.Array, jax.Array]] | None = None
    eval_data: Callable[[], Iterable[Batch]] | None = None
    flops_per_step: float = 0.0
    tokens_per_step: int = 0
    progress_keys: Sequence[str] = ("loss",)


@dataclasses.dataclass
class LoopResult:
    state: Any
    history: list[dict[str, float]]


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


@dataclasses.dataclass
class _Throughput:
    """Steps and wall time since the last log line (compilation excluded)."""

    start: float = dataclasses.field(default_factory=time.perf_counter)
    steps: int = 0

    def reset(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    def rates(self, trainer: Trainer, peak_flops: float) -> dict[str, float]:
        dt = time.perf_counter() - self.start
        if not self.steps or dt <= 0:
            return {}
        out = {"steps_per_s": self.steps / dt}
        if trainer.tokens_per_step:
            out["tokens_per_s"] = self.steps * trainer.tokens_per_step / dt
        if trainer.flops_per_step:
            out["mfu"] = self.steps * trainer.flops_per_step / dt / peak_flops
        return out


def jit_step(train_step, state_shardings: Any, batch_sharding: Any, mesh: Mesh):
    """`train_step` jitted as the loop runs it: (state, batch, base_rng) -> (state, metrics), the state donated and
    kept in its shardings, the dropout rng folded with the state's step (a resumed run draws the same masks)."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def step_fn(state, batch, base_rng):
        return train_step(state, batch, jax.random.fold_in(base_rng, state.step))

    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


class TrainLoop:
    """One run of a Trainer in a workdir: `TrainLoop(trainer, config, workdir, mesh).run()`.

    Runs up to `config.train.steps` steps in total (resuming from the newest clean checkpoint in
    WORKDIR/checkpoints; a resume with other model or data settings is a ConfigError), logs every
    `train.log_every`, evaluates every `train.eval_every`, checkpoints every `train.ckpt_every` and at the end.
    On SIGTERM it saves and raises Preempted. A NaN/inf loss or gradient norm, or non-finite parameters at a
    save, raise NonFiniteLossError after the pending checkpoint writes finish; no checkpoint is written from
    the bad step on. The run's config goes to WORKDIR/config.json; metrics.jsonl rows that a killed run wrote
    after its last checkpoint are dropped on resume.
    """

    def __init__(self, trainer: Trainer, config, workdir: str, mesh: Mesh):
        if (trainer.train_step is None) == (trainer.iteration is None):
            raise ValueError("a Trainer has either a train_step or an iteration")
        self.trainer, self.t, self.workdir, self.mesh = trainer, config.train, workdir, mesh
        self.config = config
        self.peak = flops_lib.peak_flops_per_device(self.t.peak_flops) * jax.device_count()
        self.history: list[dict[str, float]] = []
        self.pending: list[tuple[int, Metrics]] = []
        self.clock = _Throughput()
        self.state: Any = None
        self.data_iter = iter(trainer.train_data) if trainer.train_data is not None else None
        self.jeval = jax.jit(trainer.eval_step) if trainer.eval_step is not None else None
        self.mngr = None
        self.writer = None
        self.pbar = None

    def run(self) -> LoopResult:
        fs.makedirs(self.workdir)  # a no-op on an object store
        if checkpoints.all_steps(self.workdir):
            integrity.check_resume(self.workdir, self.config, checkpoints.has_data_position(self.workdir))
        integrity.write_config(self.workdir, self.config)
        self.writer = MetricWriter(self.workdir)
        self.mngr = checkpoints.manager(self.workdir, keep=self.t.keep_ckpts, async_save=self.t.async_ckpt)
        rng = jax.random.key(self.t.seed)
        init_rng, step_rng = jax.random.split(rng)
        with mesh_lib.activation_rules(self.mesh), _StopSignal() as stop:
            self.state = checkpoints.restore_or_init(
                self.mngr, self.trainer.init_fn, self.mesh, init_rng, self.data_iter
            )
            start = int(self.state.step)
            self.writer.truncate_after(start)  # rows a killed run logged after its last checkpoint
            advance = self._advance_fn(step_rng)
            self.pbar = tqdm(
                total=self.t.steps,
                initial=start,
                disable=not self.t.progress or jax.process_index() != 0,
                dynamic_ncols=True,
            )
            try:
                stopped = self._steps(start, advance, stop)
            finally:
                self.pbar.close()
                self.mngr.wait_until_finished()
                self.writer.close()
        if stopped:
            raise Preempted(int(self.state.step))
        return LoopResult(state=self.state, history=self.history)

    def _steps(self, start: int, advance: Callable[[int], Metrics], stop: _StopSignal) -> bool:
        """Steps start .. train.steps; True when a SIGTERM stopped them early (after a save)."""
        t, last_saved = self.t, start
        for step in range(start, t.steps):
            if (jax.process_count() == 1 or step % t.log_every == 0) and stop.agreed():
                if last_saved != int(self.state.step):
                    self._save(int(self.state.step))
                self._flush()
                return True
            metrics = advance(step)
            done = step + 1
            self.pending.append((done, metrics))
            self.clock.steps += 1
            self.pbar.update(1)
            if step == start:  # exclude compilation from throughput
                jax.block_until_ready(metrics)
                self.clock.reset()
            if done % t.log_every == 0 or done == t.steps:
                self._flush()
            if done % t.eval_every == 0 or done == t.steps:
                self._evaluate(done)
            if done % t.ckpt_every == 0 or done == t.steps:
                self._save(done)
                last_saved = done
        self._flush()
        return False

    def _advance_fn(self, step_rng: jax.Array) -> Callable[[int], Metrics]:
        """step -> metrics, advancing self.state by one step (the trainer's iteration, or its jitted step)."""
        trainer = self.trainer
        if trainer.iteration is not None:

            def advance_iteration(step: int) -> Metrics:
                self.state, metrics = trainer.iteration(self.state, step, self.data_iter)
                return metrics

            return advance_iteration

        shardings = jax.tree.map(lambda x: x.sharding, self.state)
        jstep = jit_step(trainer.train_step, shardings, mesh_lib.batch_sharding(self.mesh), self.mesh)

        def advance_batch(step: int) -> Metrics:
            batch = mesh_lib.put_batch(self.mesh, next(self.data_iter))
            self.state, metrics = jstep(self.state, batch, step_rng)
            return metrics

        return advance_batch

    def _flush(self) -> None:
        """Fetches pending metrics, stops on a non-finite loss, logs their averages with throughput."""
        if not self.pending:
            return
        fetched = jax.device_get(self.pending)
        self.pending.clear()
        for step, m in fetched:
            for key in ("loss", "grad_norm"):
                if key in m and not math.isfinite(float(m[key])):
                    self._diverged(f"{key.replace('_', ' ')} is {float(m[key])} at step {step}")
        row = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
        row.update(self.clock.rates(self.trainer, self.peak))
        self._record(fetched[-1][0], row)
        shown = {k: f"{row[k]:.3f}" for k in self.trainer.progress_keys if k in row}
        self.pbar.set_postfix(shown, refresh=False)
        self.clock.reset()

    def _record(self, step: int, row: dict[str, float]) -> None:
        self.writer.write(step, row)
        self.history.append({"step": step, **row})

    def _evaluate(self, step: int) -> None:
        if self.jeval is None or self.trainer.eval_data is None:
            return
        loss_sum = weight = 0.0
        for i, batch in enumerate(self.trainer.eval_data()):
            if i >= self.t.eval_batches:
                break
            loss, w = jax.device_get(self.jeval(self.state.params, mesh_lib.put_batch(self.mesh, batch)))
            loss_sum, weight = loss_sum + float(loss), weight + float(w)
        if weight:
            self._record(step, {"eval_loss": loss_sum / weight})

    def _save(self, step: int) -> None:
        self._flush()  # never checkpoint a state whose loss or gradient was not finite
        if not bool(_all_finite(self.state)):
            self._diverged(f"the parameters are not finite at step {step}")
        self.writer.flush()  # a remote metrics.jsonl holds every row up to a saved step (resumes truncate after it)
        checkpoints.save(self.mngr, step, self.state, self.data_iter)

    def _diverged(self, what: str) -> None:
        raise NonFiniteLossError(
            f"{what}; stopped. The last good checkpoint (step {self.mngr.latest_step()}) is kept in "
            f"{self.workdir}/checkpoints"
        )


@jax.jit
def _all_finite(state: Any) -> jax.Array:
    """True when every floating-point leaf of the state is finite (one fused reduction on device)."""
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def train(trainer: Trainer, config, workdir: str, mesh: Mesh) -> LoopResult:
    """Runs `trainer` in `workdir` to `config.train.steps` steps (see TrainLoop)."""
    return TrainLoop(trainer, config, workdir, mesh).run()
