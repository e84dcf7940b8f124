"""ArrayRecord shards of prepared documents, and the random-access corpus the loader reads from them.

A prepared directory holds `train-00000-of-000NN.array_record` ... and `val-...` shards; each record is the
UTF-8 JSON of {"id", "source", "text"}. The directory may be local or a URL (gs://...): a shard is written to a
local file and then renamed into place or uploaded whole (ArrayRecord's writer cannot open a URL), so a shard
that exists is complete; grain's ArrayRecordDataSource reads gs:// shards directly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grain

from gptx import fs
from gptx.errors import DataError

SPLITS = ("train", "val")
SUFFIX = ".array_record"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SUFFIX}"


def write_shard(path: str, records: Sequence[dict]) -> None:
    """Writes the records as one ArrayRecord file at `path` (local or a URL), whole or not at all."""
    from array_record.python import array_record_module

    with fs.local_output(path) as local:
        writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
        try:
            for r in records:
                writer.write(json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        finally:
            writer.close()


def shard_files(directory: str, split: str) -> list[str]:
    """The shards of one split in a prepared directory (local or a URL), sorted."""
    return fs.glob(fs.join(directory, f"{split}-*-of-*{SUFFIX}"))


def is_prepared(path: str) -> bool:
    """True for a directory written by `prepare` (it has train shards)."""
    return fs.isdir(path) and bool(shard_files(path, "train"))


def record_text(raw: bytes) -> str:
    """The text of one stored record (module-level, so grain worker processes can pickle it)."""
    return json.loads(raw)["text"]


def split_dataset(directory: str, split: str) -> grain.MapDataset:
    """grain MapDataset of the texts of one split: ArrayRecordDataSource -> JSON decode."""
    files = shard_files(directory, split)
    if not files:
        return grain.MapDataset.source([])
    try:
        source = grain.sources.ArrayRecordDataSource(files)
    except RuntimeError as e:  # array_record's message does not say which file
        bad = next((f for f in files if not _readable(f)), directory)
        raise DataError(f"{bad}: not a readable ArrayRecord shard ({e}); rerun `prepare` to rewrite it") from None
    return grain.MapDataset.source(source).map(record_text)


def _readable(path: str) -> bool:
    from array_record.python import array_record_module

    try:
        array_record_module.ArrayRecordReader(path).close()
    except RuntimeError:
        return False
    return True


class PreparedCorpus(Sequence):
    """The documents of a prepared directory: `train` and `val` grain MapDatasets of str (random access, lazy).

    As a sequence it is train followed by val. `gptx.data.loader.split_train_val` returns the prepared splits
    rather than cutting the tail, because the validation split was held out before mixing.
    """

    def __init__(self, directory: str):
        if not is_prepared(directory):
            raise FileNotFoundError(f"{directory} holds no train-*{SUFFIX} shards: run `python -m gptx.main prepare`")
        self.directory = directory
        self.train = split_dataset(directory, "train")
        self.val = split_dataset(directory, "val")

    def __len__(self) -> int:
        return len(self.train) + len(self.val)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.train[i] if i < len(self.train) else self.val[i - len(self.train)]
