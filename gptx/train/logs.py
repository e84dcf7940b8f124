"""Metric writers: JSONL and TensorBoard, written by process 0 only."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as JSON to `path` on process 0 only, through a temporary file and a rename, so a reader
    never sees half a file and an interrupted write leaves the previous one intact."""
    if jax.process_index() != 0:
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


class MetricWriter:
    """Appends `{"step": s, ...}` lines to WORKDIR/metrics.jsonl and scalars to WORKDIR/tensorboard."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.active and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **{k: _json_float(v) for k, v in clean.items()}}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """Drops the rows of steps after `step` (those a killed run logged after its last checkpoint), so a
        resumed run's metrics.jsonl has each step once. Rewritten whole through a rename, never half-written."""
        if not self.active or not os.path.exists(self.path):
            return
        rows = read_metrics(os.path.dirname(self.path))
        keep = [r for r in rows if r.get("step", 0) <= step]
        if len(keep) == len(rows):
            return
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _json_float(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All metric lines of a run, in order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
