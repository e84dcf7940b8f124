"""Exact and MinHash-LSH deduplication as Beam transforms, keeping the document the local runner keeps.

Exact: GroupByKey on the 128-bit hash of the normalised text; the smallest order key of each group is kept.
Fuzzy: MinHash signatures and LSH band keys per batch of documents (gptx.data.dedup, the local functions) ->
GroupByKey on (band, key) -> candidate pairs -> with `verify`, the exact Jaccard of each distinct pair, its two
shingle sets brought together by two joins -> connected components (large-star/small-star,
gptx.data.beam.components) -> every document but the smallest of its component is dropped. Clusters are the
connected components of the same graph the local `dedup.cluster` builds, so both runners drop the same ids.
"""

from __future__ import annotations

import heapq
import itertools

import apache_beam as beam

from gptx.data import dedup, ngrams
from gptx.data.beam import common
from gptx.data.beam.components import ConnectedComponents
from gptx.data.prepare_plan import Context, snippet

TOP_CLUSTERS = 5  # largest clusters shown in the report, as the local runner


def _summary(members: list[tuple[int, dict]], size: int, sources: set[str]) -> dict:
    """A cluster for the report: its size, whether it spans sources, its three earliest members."""
    return {"root": members[0][0], "size": size, "cross": len(sources) > 1, "members": [m[1] for m in members]}


def _exact_group(item):
    """(hash, records) -> the earliest record; a group of two or more also goes to "clusters"."""
    _, recs = item
    earliest: list[tuple[int, int, dict]] = []
    size, sources = 0, set()
    for r in recs:
        size += 1
        sources.add(r["source"])
        earliest = heapq.nsmallest(3, [*earliest, (r["_o"], size, r)])
    yield earliest[0][2]
    if size > 1:
        yield beam.pvalue.TaggedOutput("clusters", _summary([(o, snippet(r)) for o, _, r in earliest], size, sources))


def _cluster_details(totals: tuple, largest: list) -> dict:
    n, removed, cross = totals
    examples = [{"size": c["size"], "members": c["members"]} for c in largest]
    return {"clusters": n, "docs_removed": removed, "cross_source_clusters": cross, "examples": examples}


def cluster_details(clusters, label: str):
    """The local runner's cluster report from a PCollection of cluster summaries."""
    totals = (
        clusters
        | f"{label}Counts" >> beam.Map(lambda c: (1, c["size"] - 1, int(c["cross"])))
        | f"{label}Totals" >> beam.CombineGlobally(common.SumTuples(3))
    )
    largest = clusters | f"{label}Largest" >> beam.combiners.Top.Of(TOP_CLUSTERS, key=lambda c: (c["size"], -c["root"]))
    return totals, largest


def stage_exact_dedup(records, ctx: Context):
    pipeline = records.pipeline
    if not ctx.cfg.dedup.exact:
        return records, pipeline | "ExactSkipped" >> beam.Create([{"skipped": "config.data_prep.dedup.exact is False"}])
    out = (
        records
        | "TextKey" >> beam.Map(lambda r: (dedup.text_key(r["text"]), r))
        | "SameText" >> beam.GroupByKey()
        | "Earliest" >> beam.FlatMap(_exact_group).with_outputs("clusters", main="records")
    )
    totals, largest = cluster_details(out.clusters, "Exact")
    details = common.assemble(
        pipeline,
        "ExactDetails",
        _cluster_details,
        totals=beam.pvalue.AsSingleton(totals),
        largest=beam.pvalue.AsSingleton(largest),
    )
    return out.records, details


class Signatures(beam.DoFn):
    """A batch of records -> ((band, band key), order key) of every document with words, and with `verify`
    (order key, sorted unique shingles) to the "sets" output."""

    def __init__(self, cfg: dedup.DedupConfig):
        self.cfg = cfg
        self.bands, self.rows = cfg.lsh_shape()

    def process(self, batch):
        shingles = ngrams.ngrams(ngrams.words([r["text"] for r in batch]), self.cfg.ngram, short="whole")
        keys = dedup.band_keys(dedup.signatures(shingles, self.cfg.num_perm, self.cfg.seed), self.bands, self.rows)
        for i, r in enumerate(batch):
            lo, hi = shingles.offsets[i], shingles.offsets[i + 1]
            if hi == lo:
                continue  # without words, every document would share the empty signature
            for band in range(self.bands):
                yield (band, int(keys[i, band])), r["_o"]
            if self.cfg.verify:
                yield beam.pvalue.TaggedOutput("sets", (r["_o"], dedup.shingle_set(shingles.hashes[lo:hi])))


def _bucket_pairs(item, verify: bool):
    """(bucket, members) -> candidate pairs (a, b), a < b: all of them to verify, else a star (same components)."""
    members = sorted(set(item[1]))
    if verify:
        yield from itertools.combinations(members, 2)
    else:
        yield from ((members[0], b) for b in members[1:])


def _send_set(item):
    """(a, {"set": [set of a], "pair": [b, ...]}) -> (b, (a, set of a)) for each pair."""
    a, g = item
    sets = list(g["set"])
    for b in g["pair"]:
        yield b, (a, sets[0])


def _verify(item, threshold: float):
    """(b, {"set": [set of b], "left": [(a, set of a)]}) -> the edge (a, b) when Jaccard >= threshold; the
    others go to "rejected"."""
    b, g = item
    sets = list(g["set"])
    for a, set_a in g["left"]:
        if dedup.jaccard(set_a, sets[0]) >= threshold:
            yield a, b
        else:
            yield beam.pvalue.TaggedOutput("rejected", (a, b))


def _apply_parents(item):
    """(order key, {"rec", "parent", "root"}) -> the record unless it has a parent; every member of a cluster
    goes to "members" as (root, (order key, snippet, source))."""
    o, g = item
    parents, is_root = list(g["parent"]), bool(list(g["root"]))
    for r in g["rec"]:
        if parents:
            yield beam.pvalue.TaggedOutput("members", (parents[0], (o, snippet(r), r["source"])))
            continue
        yield r
        if is_root:
            yield beam.pvalue.TaggedOutput("members", (o, (o, snippet(r), r["source"])))


def _cluster_of(item) -> dict:
    _, members = item
    members = sorted(members, key=lambda m: m[0])
    return _summary([(o, s) for o, s, _ in members[:3]], len(members), {m[2] for m in members})


def _edges(records, cfg: dedup.DedupConfig):
    """The graph of near-duplicates: (edges, number of candidate pairs, number rejected by verification)."""
    out = common.batches(records, "FuzzyBatches") | "MinHash" >> beam.ParDo(Signatures(cfg)).with_outputs(
        "sets", main="bands"
    )
    pairs = (
        out.bands
        | "Buckets" >> beam.GroupByKey()
        | "BucketPairs" >> beam.FlatMap(_bucket_pairs, cfg.verify)
        | "DistinctPairs" >> beam.Distinct()
    )
    candidates = common.count(pairs, "CountPairs")
    if not cfg.verify:
        return pairs, candidates, common.singleton(0, records.pipeline, "NoRejected")
    left = {"set": out.sets, "pair": pairs} | "JoinLeft" >> beam.CoGroupByKey() | "SendSet" >> beam.FlatMap(_send_set)
    checked = (
        {"set": out.sets, "left": left}
        | "JoinRight" >> beam.CoGroupByKey()
        | "Verify" >> beam.FlatMap(_verify, cfg.threshold).with_outputs("rejected", main="edges")
    )
    return checked.edges, candidates, common.count(checked.rejected, "CountRejected")


def _fuzzy_details(dc: dedup.DedupConfig, candidates: int, rejected: int, totals: tuple, largest: list) -> dict:
    bands, rows = dc.lsh_shape()
    return {
        "bands": bands,
        "rows": rows,
        "num_perm": dc.num_perm,
        "threshold": dc.threshold,
        "candidates_checked": candidates if dc.verify else 0,
        "false_positives_rejected": rejected,
        **_cluster_details(totals, largest),
    }


def stage_fuzzy_dedup(records, ctx: Context):
    pipeline = records.pipeline
    if not ctx.cfg.dedup.fuzzy:
        return records, pipeline | "FuzzySkipped" >> beam.Create([{"skipped": "config.data_prep.dedup.fuzzy is False"}])
    dc = dedup.DedupConfig.from_config(ctx.cfg.dedup)
    edges, candidates, rejected = _edges(records, dc)
    parents = edges | "Components" >> ConnectedComponents(ctx.cfg.get("beam_cc_rounds", 8))
    roots = parents | "RootKeys" >> beam.Map(lambda x: (x[1], None)) | "DistinctRoots" >> beam.Distinct()
    keyed = records | "ByOrder" >> beam.Map(lambda r: (r["_o"], r))
    out = (
        {"rec": keyed, "parent": parents, "root": roots}
        | "JoinClusters" >> beam.CoGroupByKey()
        | "DropNonRoots" >> beam.FlatMap(_apply_parents).with_outputs("members", main="records")
    )
    clusters = out.members | "ClusterMembers" >> beam.GroupByKey() | "ClusterSummary" >> beam.Map(_cluster_of)
    totals, largest = cluster_details(clusters, "Fuzzy")
    details = common.assemble(
        pipeline,
        "FuzzyDetails",
        lambda **kw: _fuzzy_details(dc, **kw),
        candidates=candidates,
        rejected=rejected,
        totals=beam.pvalue.AsSingleton(totals),
        largest=beam.pvalue.AsSingleton(largest),
    )
    return out.records, details
