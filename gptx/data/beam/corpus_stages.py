"""The stages of `prepare` that need something learned from the whole corpus, as Beam transforms.

quality: the classifier is fitted on one worker on a sample of each class (the smallest sample keys, a hash
of the text, up to `max_train_docs` and `max_train_bytes`: the local runner's sample) and reaches the scoring
workers as a side input; the Pareto draw of a document is a hash of its text, so the kept set does not depend
on worker order.
decontam: the evaluation N-grams are a side input; N-grams found in more than `max_doc_freq` documents are
counted across the corpus, then documents are cut as `decontam.clean_document` cuts them locally.
"""

from __future__ import annotations

import collections
import io

import apache_beam as beam
import numpy as np

from gptx import fs
from gptx.data import decontam, quality
from gptx.data.beam import common
from gptx.data.prepare_plan import Context, snippet


def _sample_entry(r: dict, seed: int) -> tuple:
    return float(quality.sample_keys([r["text"]], seed)[0]), r["_o"], r["text"]


def _sample(records, role: str, roles: dict, qc: quality.QualityConfig):
    """One list of (sample key, order key, text): the class's training sample."""
    entries = (
        records
        | f"{role}Class" >> beam.Filter(lambda r: roles[r["source"]] == role)
        | f"{role}Keys" >> beam.Map(_sample_entry, qc.seed)
    )
    if qc.max_train_docs:
        return entries | f"{role}Sample" >> beam.combiners.Top.Smallest(qc.max_train_docs)
    return entries | f"{role}All" >> beam.combiners.ToList()


def _trimmed(sample: list, max_bytes: int) -> list:
    """The sample (smallest sample keys first) cut as `quality.training_sample` cuts it, in corpus order."""
    sample = sorted(sample, key=lambda e: (e[0], e[1]))
    sizes = np.array([len(e[2].encode("utf-8", "surrogatepass")) for e in sample], np.int64)
    keep = np.cumsum(sizes) - sizes < max_bytes if max_bytes else np.ones(len(sample), bool)
    return sorted((e for e, k in zip(sample, keep, strict=True) if k), key=lambda e: e[1])


def _train(positives: list, negatives: list, qc: quality.QualityConfig, out: str):
    """(model, metrics) fitted on the samples in corpus order, the model saved to OUT/quality_model.npz;
    (None, None) when there is no raw document to filter."""
    if not negatives:
        return None, None
    texts = [[e[2] for e in _trimmed(s, qc.max_train_bytes)] for s in (positives, negatives)]
    model, metrics = quality.train(texts[0], texts[1], qc)
    buf = io.BytesIO()
    model.save(buf)
    fs.write_atomic(fs.join(out, "quality_model.npz"), buf.getvalue())
    return model, metrics


class Score(beam.DoFn):
    """A batch of records -> those kept by the Pareto rule (all but raw ones pass); each raw document goes to
    "scored" as (source, score, kept, order key, snippet)."""

    def __init__(self, qc: quality.QualityConfig, roles: dict):
        self.qc, self.roles = qc, roles

    def process(self, batch, trained):
        model = trained[0]
        raw = [i for i, r in enumerate(batch) if self.roles[r["source"]] == "raw"]
        if model is None or not raw:
            yield from batch
            return
        texts = [batch[i]["text"] for i in raw]
        scores = model.score(texts)
        keep = dict(zip(raw, quality.pareto_keep(texts, scores, self.qc.pareto_alpha, self.qc.seed), strict=True))
        score = dict(zip(raw, scores.tolist(), strict=True))
        for i, r in enumerate(batch):
            if i in keep:
                yield beam.pvalue.TaggedOutput("scored", (r["source"], score[i], bool(keep[i]), r["_o"], snippet(r)))
                if not keep[i]:
                    continue
            yield r


def _quality_details(trained, per_source: list, lowest: list, highest: list, qc: quality.QualityConfig) -> dict:
    if trained[0] is None:
        return {"skipped": "no source has role 'raw'"}
    rows = {s: {"docs": n, "kept": k, "mean_score": total / max(n, 1)} for s, (n, k, total) in per_source}
    return {
        "classifier": trained[1],
        "pareto_alpha": qc.pareto_alpha,
        "raw_sources": rows,
        "lowest_scored": [{**e[4], "score": e[1]} for e in lowest],
        "highest_scored": [{**e[4], "score": e[1]} for e in highest],
    }


def stage_quality(records, ctx: Context):
    pipeline = records.pipeline
    qc = quality.QualityConfig.from_config(ctx.cfg.quality)
    roles = {s.name: s.role for s in ctx.sources}
    if not qc.enabled or "raw" not in roles.values():
        why = "config.data_prep.quality.enabled is False" if not qc.enabled else "no source has role 'raw'"
        return records, pipeline | "QualitySkipped" >> beam.Create([{"skipped": why}])
    pos, neg = (beam.pvalue.AsSingleton(_sample(records, role, roles, qc)) for role in ("curated", "raw"))
    trained = common.assemble(
        pipeline, "TrainClassifier", lambda **kw: _train(**kw, qc=qc, out=ctx.out), positives=pos, negatives=neg
    )
    out = common.batches(records, "QualityBatches") | "Score" >> beam.ParDo(
        Score(qc, roles), beam.pvalue.AsSingleton(trained)
    ).with_outputs("scored", main="records")
    per_source = (
        out.scored
        | "ScoreRows" >> beam.Map(lambda e: (e[0], (1, int(e[2]), e[1])))
        | "ScoreSums" >> beam.CombinePerKey(common.SumTuples(3))
    )
    lowest = out.scored | "Lowest" >> beam.combiners.Top.Smallest(3, key=lambda e: (e[1], e[3]))
    highest = out.scored | "Highest" >> beam.combiners.Top.Largest(3, key=lambda e: (e[1], -e[3]))
    details = common.assemble(
        pipeline,
        "QualityDetails",
        lambda **kw: _quality_details(**kw, qc=qc),
        trained=beam.pvalue.AsSingleton(trained),
        per_source=beam.pvalue.AsList(per_source),
        lowest=beam.pvalue.AsSingleton(lowest),
        highest=beam.pvalue.AsSingleton(highest),
    )
    return out.records, details


class FindHits(beam.DoFn):
    """A batch of records -> (record, its hits); each (N-gram, order key) found goes to "found"."""

    def process(self, batch, ev):
        by_doc = collections.defaultdict(list)
        for h in decontam.find_hits([r["text"] for r in batch], ev):
            by_doc[h.doc].append(h)
        for i, r in enumerate(batch):
            hits = by_doc.get(i, [])
            for g in {h.ngram for h in hits}:
                yield beam.pvalue.TaggedOutput("found", (g, r["_o"]))
            yield r, hits


class Clean(beam.DoFn):
    """(record, hits) -> the record, or the pieces left of it (`decontam.clean_document`) without the
    N-grams that are too frequent; a contaminated document's Tally goes to "tally"."""

    def __init__(self, dc: decontam.DecontamConfig, n_tasks: int):
        self.dc, self.n_tasks = dc, n_tasks

    def process(self, item, frequent):
        r, hits = item
        hits = [h for h in hits if h.ngram not in frequent]
        if not hits:
            yield r
            return
        pieces, matches = decontam.clean_document(common.public(r), hits, self.dc)
        tally = decontam.Tally(self.n_tasks)
        tally.add(r["_o"], common.public(r), matches, pieces)
        yield beam.pvalue.TaggedOutput("tally", tally)
        for k, piece in enumerate(pieces):
            yield {**piece, "_o": r["_o"], "_p": k}


class MergeTallies(beam.CombineFn):
    def __init__(self, n_tasks: int):
        super().__init__()
        self.n_tasks = n_tasks

    def create_accumulator(self):
        return decontam.Tally(self.n_tasks)

    def add_input(self, acc, x):
        return acc.merge(x)

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            out.merge(acc)
        return out

    def extract_output(self, acc):
        return acc


def stage_decontam(records, ctx: Context):
    pipeline = records.pipeline
    dc = decontam.DecontamConfig.from_config(ctx.cfg.decontam)
    if not dc.task_files:
        return records, pipeline | "DecontamSkipped" >> beam.Create(
            [{"skipped": "config.data_prep.decontam.task_files is empty"}]
        )
    ev = decontam.eval_ngrams(dc)  # the evaluation files are small: read once, shipped as a side input
    found = common.batches(records, "DecontamBatches") | "FindHits" >> beam.ParDo(
        FindHits(), common.singleton(ev, pipeline, "EvalNgrams")
    ).with_outputs("found", main="hits")
    frequent = (
        found.found
        | "NgramDocs" >> beam.Map(lambda x: (x[0], 1))
        | "NgramDocCount" >> beam.CombinePerKey(sum)
        | "Frequent" >> beam.Filter(lambda x: dc.max_doc_freq and x[1] > dc.max_doc_freq)
        | "FrequentSet" >> beam.combiners.ToList()
        | "AsSet" >> beam.Map(lambda xs: {g for g, _ in xs})
    )
    out = found.hits | "Clean" >> beam.ParDo(Clean(dc, len(ev.tasks)), beam.pvalue.AsSingleton(frequent)).with_outputs(
        "tally", main="records"
    )
    tally = out.tally | "Tally" >> beam.CombineGlobally(MergeTallies(len(ev.tasks)))
    details = common.assemble(
        pipeline,
        "DecontamDetails",
        lambda tally, docs_in, frequent: tally.report(ev, dc, docs_in, len(frequent)),
        tally=beam.pvalue.AsSingleton(tally),
        docs_in=common.count(records, "DecontamDocsIn"),
        frequent=beam.pvalue.AsSingleton(frequent),
    )
    return out.records, details
