"""What the Beam stages share: the order key that stands for a document's place in the local runner's list,
small combiners, and the way a stage's report is assembled from several PCollections.

A record in the Beam pipeline is the local runner's {"id", "source", "text"} plus two private fields: "_o", the
order key (source in config order, then file, then position in the file, packed into one int64) and, once
decontamination has split documents, "_p", the piece. Sorting by ("_o", "_p") gives exactly the order of the
local runner's list, so "keep the earliest" and every seeded choice made by position come out the same.
"""

from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam

SOURCE_BITS, FILE_BITS, POSITION_BITS = 7, 20, 36  # 127 sources, 1M files each, 68G documents per file
PRIVATE = ("_o", "_p")


def order_key(source: int, file: int, position: int) -> int:
    """One int64 that sorts as (source, file, position)."""
    if not (source < 1 << SOURCE_BITS and file < 1 << FILE_BITS and position < 1 << POSITION_BITS):
        raise ValueError(f"order key out of range: source {source}, file {file}, position {position}")
    return (source << (FILE_BITS + POSITION_BITS)) | (file << POSITION_BITS) | position


def sort_key(r: dict) -> tuple[int, int]:
    """Where a record stands in the local runner's list."""
    return r["_o"], r.get("_p", 0)


def public(r: dict) -> dict:
    """A record without the pipeline's private fields."""
    return {k: v for k, v in r.items() if k not in PRIVATE}


def nbytes(r: dict) -> int:
    return len(r["text"].encode("utf-8", "surrogatepass"))


class SumTuples(beam.CombineFn):
    """Element-wise sums of fixed-width tuples of numbers; all zeros for no input."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def create_accumulator(self):
        return (0,) * self.width

    def add_input(self, acc, x):
        return tuple(a + b for a, b in zip(acc, x, strict=True))

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            out = self.add_input(out, acc)
        return out

    def extract_output(self, acc):
        return acc


def tally(records, label: str):
    """One dict {source: [docs, bytes]} of a PCollection of records (the local runner's `prepare_plan.tally`)."""
    return (
        records
        | f"{label}PerSource" >> beam.Map(lambda r: (r["source"], (1, nbytes(r))))
        | f"{label}Sum" >> beam.CombinePerKey(SumTuples(2))
        | f"{label}List" >> beam.combiners.ToList()
        | f"{label}Dict" >> beam.Map(lambda rows: {s: list(v) for s, v in rows})
    )


def assemble(pipeline, label: str, fn: Callable[..., dict], **sides) -> beam.PCollection:
    """A PCollection of the single value fn(**side values); each side is a beam.pvalue.AsSingleton/AsList/..."""
    return pipeline | f"{label}Seed" >> beam.Create([None]) | label >> beam.Map(lambda _, **kw: fn(**kw), **sides)


def singleton(value, pipeline, label: str):
    """A constant as a side input."""
    return beam.pvalue.AsSingleton(pipeline | label >> beam.Create([value]))


def count(pcoll, label: str):
    """The number of elements as a side input (0 for none)."""
    return beam.pvalue.AsSingleton(pcoll | label >> beam.combiners.Count.Globally())


def batches(records, label: str, max_size: int = 256):
    """Records in lists, for the per-batch numpy functions (results never depend on how records are batched)."""
    return records | label >> beam.BatchElements(min_batch_size=1, max_batch_size=max_size)
