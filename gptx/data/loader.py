"""grain input pipelines: documents -> tokens -> packed sequences with segment ids -> per-process batches."""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from gptx.data import records
from gptx.data.sources import DataError, Documents
from gptx.data.tokenizer import Tokenizer

# Read a MapDataset into an iterator in the consuming thread (see lm_dataset).
SYNC_READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


class _ToExample(grain.transforms.Map):
    """A document as one next-token example: inputs [BOS, t1..tn], targets [t1..tn, EOS]."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def map(self, doc: str) -> dict[str, np.ndarray]:
        ids = np.asarray(self.tokenizer.document(doc), np.int32)
        return {"inputs": ids[:-1], "targets": ids[1:]}


def _to_batch(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "inputs": packed["inputs"],
        "targets": packed["targets"],
        "positions": packed["inputs_positions"],
        "segment_ids": packed["inputs_segment_ids"],
        # Padding (segment 0) at the end of a finite stream carries no loss.
        "weights": (packed["targets_segment_ids"] > 0).astype(np.float32),
    }


def lm_dataset(
    docs: Sequence[str] | grain.MapDataset,
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    train: bool = True,
    worker_count: int = 0,
    shard: grain.sharding.ShardOptions | None = None,
    prefetch: int = 2,
) -> grain.IterDataset:
    """Packed language-modelling batches for this process.

    `docs` is any random-access sequence of texts: a list, or a grain MapDataset such as the ArrayRecord-backed
    splits of a prepared directory (`gptx.data.records.PreparedCorpus`). Process `shard.shard_index` of
    `shard.shard_count` (default: this JAX process of all of them) reads every `shard_count`-th document and
    yields its share of the global batch: dicts of [batch_size / shard_count, seq_len] arrays `inputs`,
    `targets`, `positions` (per document), `segment_ids` (documents numbered from 1 within a row, 0 = padding)
    and `weights` (1.0 where a target counts). Training data is shuffled with `seed`, reshuffled every epoch
    and repeated forever; evaluation data is read once in order. Without workers, a thread keeps `prefetch`
    batches ready (0: none, batches are made when asked for).
    """
    shard = shard or grain.sharding.ShardByJaxProcess()
    n_proc = shard.shard_count
    if batch_size % n_proc:
        raise ValueError(f"batch size {batch_size} does not split over {n_proc} processes")
    ds = docs if isinstance(docs, grain.MapDataset) else grain.MapDataset.source(docs)
    if shard.drop_remainder:
        ds = ds[: len(ds) - len(ds) % n_proc]  # every process gets the same number of documents
    ds = ds[shard.shard_index :: n_proc]
    if train:
        ds = ds.shuffle(seed=seed).repeat()
    # Documents are read and tokenized in the consuming thread, not by grain's default pool of 16 threads with
    # 500 futures in flight: that pool polls every pending future on each element (more CPU than tokenizing
    # short documents), and the GIL serialises the work anyway. Parallel loading is `worker_count` processes;
    # overlap with the train step comes from the batch prefetch below and JAX's asynchronous dispatch.
    ds = ds.map(_ToExample(tokenizer)).to_iter_dataset(SYNC_READ)
    # Documents longer than seq_len continue in the next row as a new segment with positions from 0.
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"inputs": seq_len, "targets": seq_len})
    ds = ds.map(_to_batch).batch(batch_size // n_proc, drop_remainder=True)
    if worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    elif prefetch > 0:  # one background thread keeps `prefetch` batches ready
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    return ds


def split_train_val(docs: Sequence[str], val_fraction: float) -> tuple[Sequence[str], Sequence[str]]:
    """The last `val_fraction` of the documents (in corpus order) is the validation split.

    A prepared corpus (`gptx.data.records.PreparedCorpus`) brings its own splits, held out per source before
    mixing; `val_fraction` then does not apply. An empty training split is a DataError naming the corpus, raised
    before anything compiles (`train`, `tokenizer`, PPO's pretraining mix all split here).
    """
    if isinstance(docs, records.PreparedCorpus):
        if not len(docs.train):
            raise DataError(f"0 training documents in {docs.directory} (its train shards are empty)")
        return docs.train, docs.val
    n_val = int(round(len(docs) * val_fraction))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    n_train = len(docs) - n_val
    source, separator = getattr(docs, "source", ""), getattr(docs, "separator", "")
    if not docs:
        raise DataError(f"0 training documents in {source or 'the corpus'} (it has no documents)")
    if n_train <= 0:
        how = f" with config.data.doc_separator={separator!r}" if separator else ""
        raise DataError(
            f"0 training documents in {source or 'the corpus'}: it has {len(docs)} document"
            f"{'s' * (len(docs) != 1)}{how}, all held out for validation by config.data.val_fraction="
            f"{val_fraction:g} (split the corpus into more documents, or set --config.data.val_fraction=0)"
        )
    return (
        Documents(docs[:n_train], source=source, separator=separator),
        Documents(docs[n_train:], source=source, separator=separator),
    )
