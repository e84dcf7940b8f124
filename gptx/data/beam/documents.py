"""The per-document stages of `prepare` as Beam transforms: read, normalize, filter.

Each is `stage(pipeline or records, ctx) -> (records, details)`, details being a PCollection of the one dict the
local stage reports, built from the same functions (gptx.data.readers, gptx.data.clean).
"""

from __future__ import annotations

import collections

import apache_beam as beam

from gptx.data import clean, readers
from gptx.data.beam import common
from gptx.data.prepare_plan import Context, snippet


class ReadFiles(beam.DoFn):
    """(source index, file index, path) -> the file's records with their order key; a source with a `limit`
    is one unit (path None), read in order up to its limit. What reading found goes to the "stats" output."""

    def __init__(self, sources: list[readers.Source], on_bad_utf8: str):
        self.sources, self.on_bad_utf8 = sources, on_bad_utf8

    def process(self, unit):
        k, fi, path = unit
        src, stats = self.sources[k], readers.ReadStats()
        if path is None:
            docs = readers.iter_source(src, stats, self.on_bad_utf8)
        else:
            docs = readers.iter_file(src, path, stats, self.on_bad_utf8)
        for pos, rec in enumerate(docs):
            rec["_o"] = common.order_key(k, fi, pos)
            yield rec
        yield beam.pvalue.TaggedOutput("stats", (k, fi, stats.to_dict()))


def read_units(ctx: Context) -> list[tuple[int, int, str | None]]:
    """The work of the read stage: one unit per file, or one per source that has a `limit`."""
    units = []
    for k, src in enumerate(ctx.sources):
        files = readers.source_files(src)  # a missing file fails here, before the pipeline starts
        units += [(k, 0, None)] if src.limit else [(k, fi, path) for fi, path in enumerate(files)]
    return units


def merge_read_stats(sources: list[readers.Source], parts: list[tuple]) -> dict:
    """The read stage's details from the per-file stats, merged in file order (as one local ReadStats)."""
    merged = {
        s.name: {"documents": 0, "bytes": 0, "bad": collections.Counter(), "examples": [], "warnings": []}
        for s in sources
    }
    for k, _, d in sorted(parts, key=lambda x: (x[0], x[1])):
        m = merged[sources[k].name]
        m["documents"] += d["documents"]
        m["bytes"] += d["bytes"]
        m["bad"].update(d["bad"])
        m["examples"] = (m["examples"] + d["examples"])[: readers.MAX_EXAMPLES]
        m["warnings"] += d["warnings"]
    for src in sources:
        m = merged[src.name]
        m["bad"] = dict(m["bad"])
        if not m["documents"]:
            found = ", ".join(f"{k} {v}" for k, v in m["bad"].items())
            m["warnings"].append(
                f"source {src.name!r} yielded 0 documents from {src.path}" + (f" (bad input: {found})" if found else "")
            )
    return {"sources": merged}


def stage_read(pipeline, ctx: Context):
    out = (
        pipeline
        | "ReadUnits" >> beam.Create(read_units(ctx))
        | "ReadSpread" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(ReadFiles(ctx.sources, ctx.cfg.on_bad_utf8)).with_outputs("stats", main="records")
    )
    stats = beam.pvalue.AsList(out.stats)
    details = common.assemble(pipeline, "ReadDetails", lambda parts: merge_read_stats(ctx.sources, parts), parts=stats)
    return out.records, details


def _normalized(r: dict) -> tuple[dict, bool]:
    text = clean.normalize(r["text"])
    return {**r, "text": text}, text != r["text"]


def stage_normalize(records, ctx: Context):
    pipeline = records.pipeline
    if not ctx.cfg.clean.normalize:
        return records, pipeline | "NormalizeSkipped" >> beam.Create(
            [{"skipped": "config.data_prep.clean.normalize is False"}]
        )
    pairs = records | "Normalize" >> beam.Map(_normalized)
    kept = pairs | "NonEmpty" >> beam.FlatMap(lambda p: [p[0]] if p[0]["text"] else [])
    details = (
        pairs
        | "NormalizeCounts" >> beam.Map(lambda p: (int(p[1]), int(not p[0]["text"])))
        | "NormalizeSum" >> beam.CombineGlobally(common.SumTuples(2))
        | "NormalizeDetails" >> beam.Map(lambda c: {"changed": c[0], "empty_after_normalize": c[1]})
    )
    return kept, details


class Filter(beam.DoFn):
    """A batch of records -> those that pass the heuristic filters; the others, with the first filter they
    fail, go to the "dropped" output as (source, reason, order key, snippet)."""

    def __init__(self, fc: clean.FilterConfig, filtered: set[str]):
        self.fc, self.filtered = fc, filtered

    def process(self, batch):
        idx = [i for i, r in enumerate(batch) if r["source"] in self.filtered]
        why = dict(zip(idx, clean.filter_reasons([batch[i]["text"] for i in idx], self.fc), strict=True))
        for i, r in enumerate(batch):
            if why.get(i) is None:
                yield r
            else:
                yield beam.pvalue.TaggedOutput("dropped", (r["source"], why[i], r["_o"], snippet(r)))


def _filter_details(counts: list, examples: list) -> dict:
    reasons: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for (source, why), n in counts:
        reasons[source][why] = n
    return {"reasons": dict(reasons), "examples": {why: ex[1] for why, ex in examples}}


def stage_filter(records, ctx: Context):
    pipeline = records.pipeline
    fc = clean.FilterConfig.from_config(ctx.cfg.clean)
    filtered = {s.name for s in ctx.sources if s.filters}
    out = common.batches(records, "FilterBatches") | "Filter" >> beam.ParDo(Filter(fc, filtered)).with_outputs(
        "dropped", main="records"
    )
    counts = (
        out.dropped | "ReasonKey" >> beam.Map(lambda d: ((d[0], d[1]), 1)) | "ReasonCount" >> beam.CombinePerKey(sum)
    )
    examples = out.dropped | "ExampleKey" >> beam.Map(lambda d: (d[1], (d[2], d[3])))
    examples = examples | "FirstExample" >> beam.CombinePerKey(lambda xs: min(xs, key=lambda x: x[0]))
    details = common.assemble(
        pipeline,
        "FilterDetails",
        _filter_details,
        counts=beam.pvalue.AsList(counts),
        examples=beam.pvalue.AsList(examples),
    )
    return out.records, details
