"""Scores of log-likelihood requests kept between `eval` runs of one checkpoint.

A rerun with more tasks, more shots or a larger limit scores only the requests it has not seen: every request is
a (context tokens, continuation tokens) pair, and its score depends only on the checkpoint's parameters and the
model's context length (the batch changes it by float32 rounding, ~1e-6 nats). The cache of a checkpoint is one
JSON-lines file named after the step and the model's shape, appended to after each call, so an interrupted run
keeps what it scored. Generation is not cached (its samples depend on seeds and settings).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from absl import logging

Key = tuple[tuple[int, ...], tuple[int, ...]]
Score = tuple[float, bool, int]  # (log-probability in nats, is greedy, continuation tokens)


def key_id(key: Key) -> str:
    """A short stable name of a request: sha1 of its token lists."""
    return hashlib.sha1(json.dumps([list(key[0]), list(key[1])]).encode()).hexdigest()


class RequestCache:
    """Maps request ids to scores; `path` is read when it exists and appended to by `add`."""

    def __init__(self, path: str):
        self.path = path
        self.scores: dict[str, Score] = {}
        if os.path.exists(path):
            self._read()

    @classmethod
    def for_checkpoint(cls, workdir: str, step: int, model_cfg: Any) -> RequestCache:
        """The cache of checkpoint `step` in WORKDIR/eval_cache/, separate for each model shape (a fine-tuned
        copy of the table or another context length scores differently)."""
        shape = hashlib.sha1(json.dumps(model_cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return cls(os.path.join(workdir, "eval_cache", f"step_{step}_{shape}.jsonl"))

    def _read(self) -> None:
        bad = 0
        with open(self.path) as f:
            for line in f:
                try:
                    k, lp, greedy, n = json.loads(line)
                    self.scores[k] = (float(lp), bool(greedy), int(n))
                except (ValueError, TypeError):
                    bad += 1  # a line cut by a killed run: its request is scored again
        if bad:
            logging.warning("%s: %d unreadable lines ignored", self.path, bad)

    def get(self, keys: Sequence[Key]) -> dict[Key, Score]:
        """The cached scores of those of `keys` that have one."""
        found = {}
        for k in keys:
            if (s := self.scores.get(key_id(k))) is not None:
                found[k] = s
        return found

    def add(self, items: Iterable[tuple[Key, Score]]) -> None:
        """Records new scores (in memory and at the end of the file)."""
        lines = []
        for k, (lp, greedy, n) in items:
            name = key_id(k)
            self.scores[name] = (lp, greedy, n)
            lines.append(json.dumps([name, lp, greedy, n]) + "\n")
        if lines:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a") as f:
                f.writelines(lines)
