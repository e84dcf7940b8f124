"""Weighted mixing and the ArrayRecord shards, as Beam transforms.

The mix is planned on one worker from each document's order key and size alone (`mix.hold_out_indices`,
`mix.plan`: the local functions), which gives every kept document its split, its passes and its position in
the local runner's output; the documents are then joined to their places and each shard is written by one
worker, in order. So the shards hold the same records as the local runner's, in the same order. The plan
holds ~100 bytes per document: 10^8 documents fit a large worker.
"""

from __future__ import annotations

import apache_beam as beam

from gptx import fs
from gptx.data import mix, records
from gptx.data.beam import common
from gptx.data.prepare_plan import Context


def _meta(r: dict) -> tuple:
    return r["source"], common.sort_key(r), common.nbytes(r)


def plan(meta: list[tuple], ctx: Context) -> dict:
    """{"places": {sort key: [(split, epoch, position)]}, "counts": {split: docs}, "details": the report}."""
    by_source: dict[str, list[tuple]] = {s.name: [] for s in ctx.sources}
    for source, key, size in meta:
        by_source[source].append((key, size))
    places: dict[tuple, list] = {}
    train_keys, train_sizes, val = {}, {}, 0
    for k, (name, docs) in enumerate(by_source.items()):
        docs.sort()
        train, held = mix.hold_out_indices(len(docs), ctx.cfg.val_fraction, ctx.cfg.seed + k)
        for i in held:
            places[docs[i][0]] = [("val", 0, val)]
            val += 1
        train_keys[name] = [docs[i][0] for i in train]
        train_sizes[name] = [docs[i][1] for i in train]
    weights = {s.name: s.weight for s in ctx.sources}
    picks, rows = mix.plan(train_sizes, weights, ctx.cfg.mix.total_bytes, ctx.cfg.seed, ctx.cfg.mix.max_epochs)
    for pos, (name, i, epoch) in enumerate(picks):
        places.setdefault(train_keys[name][i], []).append(("train", epoch, pos))
    return {
        "places": places,
        "counts": {"train": len(picks), "val": val},
        "details": {"sources": rows, "val_docs": val},
    }


def _placed(item, shard_docs: int, counts: dict):
    """(sort key, {"rec": [record], "plan": [places]}) -> (shard name, (position, record)) per place."""
    _, g = item
    recs = list(g["rec"])
    for places in g["plan"]:
        for split, epoch, pos in places:
            n_shards = max(1, -(-counts[split] // shard_docs))
            name = records.shard_name(split, pos // shard_docs, n_shards)
            yield name, (pos, mix.with_epoch(common.public(recs[0]), epoch))


def _write(item, out: str) -> str:
    name, placed = item
    records.write_shard(fs.join(out, name), [r for _, r in sorted(placed, key=lambda x: x[0])])
    return name


def stage_mix(recs, ctx: Context):
    """(the mixed records, each with its "split", the mix details, the shard names written)."""
    planned = (
        recs
        | "MixMeta" >> beam.Map(_meta)
        | "MixMetaList" >> beam.combiners.ToList()
        | "MixPlan" >> beam.Map(plan, ctx)
    )
    places = planned | "Places" >> beam.FlatMap(lambda p: p["places"].items())
    keyed = recs | "BySortKey" >> beam.Map(lambda r: (common.sort_key(r), r))
    counts = beam.pvalue.AsSingleton(planned | "Counts" >> beam.Map(lambda p: p["counts"]))
    placed = (
        {"rec": keyed, "plan": places}
        | "JoinPlaces" >> beam.CoGroupByKey()
        | "Place" >> beam.FlatMap(_placed, ctx.cfg.shard_docs, counts)
    )
    mixed = placed | "Mixed" >> beam.Map(lambda x: {**x[1][1], "split": x[0].split("-")[0]})
    shards = placed | "ByShard" >> beam.GroupByKey() | "WriteShard" >> beam.Map(_write, ctx.out)
    details = planned | "MixDetails" >> beam.Map(lambda p: p["details"])
    return mixed, details, shards
