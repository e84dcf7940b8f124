"""The saved outputs of `prepare`'s stages, streamed: a stage's records are written part by part as they come
(`PartWriter`), read back lazily and as often as a stage needs (`Parts`), cut into the ~1 MB batches the
vectorised stages work on (`chunks`), and put into a planned order through local bucket files (`reorder`), so
no step holds every document."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator

from gptx import fs
from gptx.data import ngrams


def part_path(prefix: str, i: int) -> str:
    return f"{prefix}-part-{i:05d}.jsonl.gz"


class Parts:
    """The records of a stage's saved parts `prefix`-part-NNNNN.jsonl.gz, in order; each iteration reads them
    again from the files, one line at a time."""

    def __init__(self, prefix: str, n_parts: int):
        self.prefix, self.n_parts = prefix, n_parts

    def __iter__(self) -> Iterator[dict]:
        for i in range(self.n_parts):
            with fs.open_file(part_path(self.prefix, i), "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)


class Empty:
    """No records (the input of the first stage)."""

    def __iter__(self) -> Iterator[dict]:
        return iter(())


class PartWriter:
    """Writes records to parts of `per_part` records each (at least one part, possibly empty) as they come, each
    part published whole or not at all; `parts` is the number written. Use as a context manager: an error
    discards the part being written."""

    def __init__(self, prefix: str, per_part: int):
        self.prefix, self.per_part = prefix, per_part
        self.parts, self.count = 0, 0
        self.stack: contextlib.ExitStack | None = None
        self.file = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.stack is not None:
            self.stack.__exit__(*exc)
            self.stack = None

    def write(self, r: dict) -> None:
        if self.stack is None:
            self._open()
        self.file.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.count += 1
        if self.count >= self.per_part:
            self._close()

    def close(self) -> int:
        """Publishes the last part (an empty one when nothing was written); returns the number of parts."""
        if self.stack is None and not self.parts:
            self._open()
        if self.stack is not None:
            self._close()
        return self.parts

    def _open(self) -> None:
        self.stack = contextlib.ExitStack()
        tmp = self.stack.enter_context(fs.local_output(part_path(self.prefix, self.parts)))
        self.file = self.stack.enter_context(gzip.open(tmp, "wt", compresslevel=1, encoding="utf-8"))  # noqa: SIM115

    def _close(self) -> None:
        self.stack.close()
        self.stack, self.file, self.count = None, None, 0
        self.parts += 1


def chunks(recs: Iterable[dict], select: Callable[[dict], bool]) -> Iterator[tuple[list[dict], list[int]]]:
    """Consecutive runs of records with the positions (within the run) of those `select` picks, cut where the
    picked texts reach ~1 MB: the picked texts of each run are exactly one batch of `ngrams.batches` over all
    picked texts, so batch-wise results equal those computed over the whole corpus. Records that are not picked
    are held only while a batch is open (a run of them alone is cut at ~1 MB too)."""
    run: list[dict] = []
    picked: list[int] = []
    size = other = 0
    for r in recs:
        run.append(r)
        if select(r):
            picked.append(len(run) - 1)
            size += len(r["text"])
        else:
            other += len(r["text"])
        if size >= ngrams._BATCH_BYTES or (not picked and other >= ngrams._BATCH_BYTES):
            yield run, picked  # a run with nothing picked is cut anywhere: it holds no part of a batch
            run, picked, size, other = [], [], 0, 0
    if run:
        yield run, picked


def reorder(items: Iterable[tuple[int, int, dict]], buffer_chars: int = 4 << 20) -> Iterator[dict]:
    """The records of (bucket, position, record) triples in ascending (bucket, position), through local bucket
    files: only one bucket and a write buffer of ~`buffer_chars` are in memory at a time."""
    with tempfile.TemporaryDirectory(prefix="gptx-reorder-") as tmp:
        pending: dict[int, list[str]] = {}
        size = 0
        top = -1
        for bucket, pos, r in items:
            line = json.dumps([pos, r], ensure_ascii=False)
            pending.setdefault(bucket, []).append(line)
            top = max(top, bucket)
            size += len(line)
            if size >= buffer_chars:
                _spill(tmp, pending)
                size = 0
        _spill(tmp, pending)
        for b in range(top + 1):
            path = os.path.join(tmp, f"{b}.jsonl")
            if not os.path.exists(path):
                continue
            with open(path, encoding="utf-8", errors="surrogatepass") as f:
                rows = [json.loads(line) for line in f]
            os.remove(path)
            rows.sort(key=lambda x: x[0])
            for _, r in rows:
                yield r


def _spill(tmp: str, pending: dict[int, list[str]]) -> None:
    for b, lines in pending.items():
        with open(os.path.join(tmp, f"{b}.jsonl"), "a", encoding="utf-8", errors="surrogatepass") as f:
            f.write("\n".join(lines) + "\n")
    pending.clear()
