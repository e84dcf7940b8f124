"""Grain pipelines of GPT-1 fine-tuning examples: (task, example) items encoded into fixed-shape batches.

Every example is encoded by its task's input transformation (gptx/data/finetune_tasks.py) and padded to the
largest number of sequences per example among the tasks, so one jitted step serves every task.
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np

from gptx.data import finetune_tasks as ft
from gptx.data import loader
from gptx.data import tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How examples become fixed-shape arrays: tokenizer, special ids, tasks and shapes."""

    tokenizer: tokenizer_lib.Tokenizer
    special: ft.SpecialTokens
    specs: tuple[ft.TaskSpec, ...]
    seq_len: int

    @property
    def n_seqs(self) -> int:
        return max(s.n_seqs for s in self.specs)

    def encode(self, task: int, ex: ft.Example, weight: float = 1.0) -> dict[str, np.ndarray]:
        """tokens/segment_ids [S, T], extract_pos/seq_mask [S], label/task/weight [1] of one example."""
        spec = self.specs[task]
        task_token = self.special.task[task] if self.special.task else None
        seqs = ft.transform(ex, spec.kind, self.tokenizer, self.special, self.seq_len, task_token)
        filler = [self.special.start, self.special.extract]
        out = ft.pad_example(seqs, ex.label, task, self.n_seqs, self.seq_len, self.tokenizer.pad_id, filler)
        out["weight"] *= weight
        return out


class _Encode(grain.transforms.Map):
    def __init__(self, encoding: Encoding):
        self.encoding = encoding

    def map(self, item):
        task, ex, weight = item
        return self.encoding.encode(task, ex, weight)


def train_dataset(items, encoding: Encoding, batch_size: int, seed: int) -> grain.IterDataset:
    """Shuffled (reshuffled each epoch), repeated batches of this process's share of (task, example) items."""
    n_proc = jax.process_count()
    if batch_size % n_proc:
        raise ValueError(f"batch size {batch_size} does not split over {n_proc} processes")
    ds = grain.MapDataset.source([(t, ex, 1.0) for t, ex in items])[jax.process_index() :: n_proc]
    ds = ds.shuffle(seed=seed).repeat().map(_Encode(encoding)).to_iter_dataset(loader.SYNC_READ)
    return ds.batch(batch_size // n_proc, drop_remainder=True)


def eval_dataset(items, encoding: Encoding, batch_size: int) -> grain.IterDataset:
    """Every item once, in order; the last batch is filled with weight-0 copies so shapes stay fixed."""
    n_proc = jax.process_count()
    rows = [(t, ex, 1.0) for t, ex in items]
    rows += [(*rows[0][:2], 0.0)] * (-len(rows) % batch_size)
    # Contiguous per-process blocks of each global batch keep rows in order across processes.
    local = batch_size // n_proc
    first = jax.process_index() * local
    mine = [rows[b + first + i] for b in range(0, len(rows), batch_size) for i in range(local)]
    ds = grain.MapDataset.source(mine).map(_Encode(encoding)).to_iter_dataset(loader.SYNC_READ)
    return ds.batch(local, drop_remainder=True)
