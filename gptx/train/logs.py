"""Metric writers: JSONL and TensorBoard, written by process 0 only, into a local or remote (gs://) workdir."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import jax

from gptx import fs

METRICS = "metrics.jsonl"


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as JSON to `path` on process 0 only, whole or not at all (fs.write_atomic): a reader never
    sees half a file and an interrupted write leaves the previous one intact."""
    if jax.process_index() != 0:
        return
    fs.write_atomic(path, json.dumps(obj, indent=1, default=str))


class MetricWriter:
    """Writes `{"step": s, ...}` lines to WORKDIR/metrics.jsonl and scalars to WORKDIR/tensorboard.

    On local disk each row is appended. An object store cannot append (gcsfs would overwrite), so on a URL the
    rows are kept in memory and the whole object is rewritten: at most every `upload_every_s` as rows come, and
    always at `flush` (the loop flushes before each checkpoint, so every row up to a saved step is in the bucket
    when the checkpoint is) and at `close`.
    """

    def __init__(self, workdir: str, tensorboard: bool = True, upload_every_s: float = 30.0):
        self.active = jax.process_index() == 0
        self.path = fs.join(workdir, METRICS)
        self.remote = fs.is_remote(workdir)
        self.upload_every_s = upload_every_s
        self._rows: list[dict[str, Any]] | None = None  # remote: every row of the run, uploaded whole
        self._uploaded = time.monotonic()
        self._dirty = False
        self._tb = _Events(fs.join(workdir, "tensorboard")) if self.active and tensorboard else None

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        row = {"step": step, **{k: _json_float(v) for k, v in clean.items()}}
        if self.remote:
            self._remote_rows().append(row)
            self._dirty = True
            if time.monotonic() - self._uploaded >= self.upload_every_s:
                self.flush()
        else:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """Drops the rows of steps after `step` (those a killed run logged after its last checkpoint), so a
        resumed run's metrics.jsonl and TensorBoard events have each step once. Rewritten whole, never
        half-written."""
        if self._tb is not None:
            self._tb.truncate_after(step)
        if not self.active or not fs.exists(self.path):
            return
        rows = self._remote_rows() if self.remote else _read_rows(self.path)
        keep = [r for r in rows if r.get("step", 0) <= step]
        if len(keep) == len(rows):
            return
        if self.remote:
            self._rows, self._dirty = keep, True
            self.flush()
        else:
            fs.write_atomic(self.path, _jsonl(keep))

    def flush(self) -> None:
        """Uploads the rows (remote workdirs; local rows are already on disk) and TensorBoard's events."""
        if self.active and self.remote and self._dirty:
            fs.write_atomic(self.path, _jsonl(self._rows or []))
            self._dirty, self._uploaded = False, time.monotonic()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()

    def _remote_rows(self) -> list[dict[str, Any]]:
        if self._rows is None:  # a resumed run continues the rows its predecessor uploaded
            self._rows = _read_rows(self.path) if fs.exists(self.path) else []
        return self._rows


class _Events:
    """TensorBoard scalars into WORKDIR/tensorboard. A remote logdir gets its events written to a local temporary
    directory and uploaded whole at each flush (tensorboardX's own gs:// writer needs google-cloud-storage, and
    re-uploads from its destructor, which hangs a process whose bucket has gone)."""

    def __init__(self, logdir: str):
        # tensorboardX's EventsWriter writes in the calling thread: SummaryWriter queues events for a thread whose
        # flush() does not wait for it, so an upload right after a flush could miss the last scalars.
        from tensorboardX.event_file_writer import EventsWriter

        self.logdir = logdir
        self.earlier = fs.glob(fs.join(logdir, "events.out.tfevents.*"))  # of the runs this one resumes
        self.local = tempfile.mkdtemp(prefix="gptx-tensorboard-") if fs.is_remote(logdir) else None
        os.makedirs(self.local or logdir, exist_ok=True)
        # The pid keeps two writers started within one second (a quick restart) from sharing a file name.
        self.writer = EventsWriter(os.path.join(self.local or logdir, "events"), f".{os.getpid()}")

    def truncate_after(self, step: int) -> None:
        """Drops the scalars of steps after `step` from the earlier runs' events files: a killed run's last steps,
        which this run logs again."""
        for path in self.earlier:
            raw = fs.read_bytes(path)
            kept = b"".join(r for r, s in _event_records(raw) if s <= step)
            if len(kept) < len(raw):
                fs.write_atomic(path, kept)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.proto import event_pb2
        from tensorboardX.summary import scalar

        self.writer.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=scalar(tag, value)))

    def flush(self) -> None:
        self.writer.flush()
        self._upload()

    def close(self) -> None:
        self.writer.close()
        self._upload()
        if self.local is not None:
            shutil.rmtree(self.local, ignore_errors=True)

    def _upload(self) -> None:
        if self.local is not None:
            for name in os.listdir(self.local):  # one events file per writer; a resumed run adds its own
                fs.copy(os.path.join(self.local, name), fs.join(self.logdir, name))


def _event_records(raw: bytes) -> list[tuple[bytes, int]]:
    """(record, step) of each event of a TensorBoard events file: TFRecord framing, a little-endian u64 length,
    its crc, the serialized Event, its crc. A record cut short at the end (a killed writer) is dropped."""
    from tensorboardX.proto import event_pb2

    out, i = [], 0
    while i + 12 <= len(raw):
        n = int.from_bytes(raw[i : i + 8], "little")
        end = i + 12 + n + 4
        if end > len(raw):
            break
        out.append((raw[i:end], event_pb2.Event.FromString(raw[i + 12 : i + 12 + n]).step))
        i = end
    return out


def _json_float(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _read_rows(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All metric lines of a run, in order."""
    path = fs.join(os.fspath(workdir), METRICS)
    return _read_rows(path) if fs.exists(path) else []


__all__ = ["METRICS", "MetricWriter", "read_metrics", "write_json"]
