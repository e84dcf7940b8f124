"""`gptx.main prepare`: GPT-3's data preparation as a chain of stages, written to ArrayRecord shards.

    read -> normalize -> filter -> exact_dedup -> fuzzy_dedup -> quality -> decontam -> mix -> shards

Every stage is a generator from records {"id", "source", "text"} to records, filling in the details it reports
once they are through. The chain streams: each stage reads the saved output of the one before lazily (as many
passes as its algorithm needs) and its output is written part by part as it comes, so no step holds the
documents: the vectorised stages work ~1 MB of text at a time, exact dedup holds a hash per document, fuzzy
dedup band keys (and the texts of documents that meet in an LSH bucket), quality its training sample and a
score per raw document, decontamination the hits, mix the sizes and its plan (the mixed order is restored
through local bucket files, gptx.data.stage_io), and shards stream from the mix. The runner counts documents
and bytes in and out of each stage per source, saves each stage's output under OUTPUT/stages/ in parts of
STAGE_PART_DOCS records with a fingerprint of everything that determines it (settings of this and all earlier
stages, sizes and times of the input files), and on a rerun resumes after the last stage whose fingerprint
still matches. Shards are written one by one and recorded as done, so an interrupted run does not rewrite
finished shards. Deduplication runs over all
sources together and keeps the copy from the earliest source in config order, so list curated sources first
(GPT-3 also removed WebText's documents from Common Crawl). `config.data_prep.runner=beam` runs the same
stages on Apache Beam (gptx.data.beam) with the same answer.
The result: OUTPUT/train-*.array_record, val-*.array_record, report.json, summary.md and quality_model.npz;
train on it with --config.data.corpus=OUTPUT.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator

import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from gptx import fs
from gptx.config import ConfigError
from gptx.data import clean, decontam, dedup, mix, ngrams, quality, readers, records, stage_io, summary
from gptx.data.prepare_plan import STAGES, Context, snippet, stage_row, tally, validate_data_prep, write_report

STAGE_PART_DOCS = 50_000  # records per file of a stage's saved output


# --------------------------------------------------------------------------------------------------------------
# Stages: (records, ctx, details) -> records, streamed; `details` is filled once the records are through


def stage_read(_: Iterable[dict], ctx: Context, details: dict) -> Iterator[dict]:
    bad = {}
    for src in ctx.sources:
        stats = readers.ReadStats()
        n = 0
        for r in readers.iter_source(src, stats, ctx.cfg.on_bad_utf8):
            n += 1
            yield r
        if not n:
            found = ", ".join(f"{k} {v}" for k, v in stats.bad.items())
            stats.warnings.append(
                f"source {src.name!r} yielded 0 documents from {src.path}" + (f" (bad input: {found})" if found else "")
            )
        bad[src.name] = stats.to_dict()
    details["sources"] = bad


def stage_normalize(recs: Iterable[dict], ctx: Context, details: dict) -> Iterator[dict]:
    if not ctx.cfg.clean.normalize:
        details["skipped"] = "config.data_prep.clean.normalize is False"
        yield from recs
        return
    changed = empty = 0
    for r in recs:
        text = clean.normalize(r["text"])
        changed += text != r["text"]
        r["text"] = text
        if text:
            yield r
        else:
            empty += 1
    details.update(changed=changed, empty_after_normalize=empty)


def stage_filter(recs: Iterable[dict], ctx: Context, details: dict) -> Iterator[dict]:
    fc = clean.FilterConfig.from_config(ctx.cfg.clean)
    filtered = {s.name for s in ctx.sources if s.filters}
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    examples: dict[str, dict] = {}
    for run, picked in stage_io.chunks(recs, lambda r: r["source"] in filtered):
        reasons: list[str | None] = [None] * len(run)
        for i, why in zip(picked, clean.filter_reasons([run[i]["text"] for i in picked], fc), strict=True):
            reasons[i] = why
        for r, why in zip(run, reasons, strict=True):
            if why:
                counts[r["source"]][why] += 1
                examples.setdefault(why, snippet(r))
            else:
                yield r
    details.update(reasons={s: dict(c) for s, c in counts.items()}, examples=examples)


def _drop_clustered(recs: Iterable[dict], clusters: list[list[int]], details: dict, top: int = 5) -> Iterator[dict]:
    """The records outside clusters and the first (earliest source in config order) of each; then the cluster
    report in `details`, from the sources of the members and snippets of the largest clusters."""
    drop = {i for c in clusters for i in c[1:]}
    largest = sorted(clusters, key=len, reverse=True)[:top]
    shown = {i for c in largest for i in c[:3]}
    members = {i for c in clusters for i in c}
    source_of, snippets = {}, {}
    for i, r in enumerate(recs):
        if i in members:
            source_of[i] = r["source"]
        if i in shown:
            snippets[i] = snippet(r)
        if i not in drop:
            yield r
    details.update(
        clusters=len(clusters),
        docs_removed=sum(len(c) - 1 for c in clusters),
        cross_source_clusters=sum(len({source_of[i] for i in c}) > 1 for c in clusters),
        examples=[{"size": len(c), "members": [snippets[i] for i in c[:3]]} for c in largest],
    )


def stage_exact_dedup(recs: Iterable[dict], ctx: Context, details: dict) -> Iterator[dict]:
    if not ctx.cfg.dedup.exact:
        details["skipped"] = "config.data_prep.dedup.exact is False"
        yield from recs
        return
    first: dict[bytes, int] = {}
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(recs):  # the held state: one 128-bit hash per distinct text
        j = first.setdefault(dedup.text_key(r["text"]), i)
        if j != i:
            groups.setdefault(j, [j]).append(i)
    del first
    yield from _drop_clustered(recs, [groups[j] for j in sorted(groups)], details)


def stage_fuzzy_dedup(recs: Iterable[dict], ctx: Context, details: dict) -> Iterator[dict]:
    if not ctx.cfg.dedup.fuzzy:
        details["skipped"] = "config.data_prep.dedup.fuzzy is False"
        yield from recs
        return
    dc = dedup.DedupConfig.from_config(ctx.cfg.dedup)
    bands, rows = dc.lsh_shape()
    keys, valid = [np.zeros((0, bands), np.uint64)], [np.zeros(0, bool)]
    for run, _ in stage_io.chunks(recs, lambda r: True):  # the held state: band keys [D, bands]
        shingles = ngrams.ngrams(ngrams.words([r["text"] for r in run]), dc.ngram, short="whole")
        keys.append(dedup.band_keys(dedup.signatures(shingles, dc.num_perm, dc.seed), bands, rows))
        valid.append(np.diff(shingles.offsets) > 0)
    keys, valid = np.concatenate(keys), np.concatenate(valid)
    met = {int(i) for g in dedup.key_buckets(keys, valid) for i in g}  # documents that share a bucket
    texts = {i: r["text"] for i, r in enumerate(recs) if i in met}
    res = dedup.cluster_keys(keys, valid, dedup.TextShingleSets(texts, dc.ngram), dc)
    del texts, keys, valid
    details.update(
        bands=res.bands,
        rows=res.rows,
        num_perm=dc.num_perm,
        threshold=dc.threshold,
        candidates_checked=res.checked,
        false_positives_rejected=res.rejected,
    )
    yield from _drop_clustered(recs, res.clusters, details)


def stage_quality(recs: Iterable[dict], ctx: Context, details: dict) -> Iterator[dict]:
    qc = quality.QualityConfig.from_config(ctx.cfg.quality)
    role = {s.name: s.role for s in ctx.sources}
    if not qc.enabled or not any(role[r["source"]] == "raw" for r in recs):
        details["skipped"] = (
            "config.data_prep.quality.enabled is False" if not qc.enabled else "no source has role 'raw'"
        )
        yield from recs
        return
    model, metrics = quality_model(recs, role, qc)
    saved = io.BytesIO()
    model.save(saved)
    fs.write_atomic(fs.join(ctx.out, "quality_model.npz"), saved.getvalue())
    scores, kept = [], []
    for run, picked in stage_io.chunks(recs, lambda r: role[r["source"]] == "raw"):
        texts = [run[i]["text"] for i in picked]
        scores.append(model.score(texts))
        keep = quality.pareto_keep(texts, scores[-1], qc.pareto_alpha, qc.seed)
        kept.append(keep)
        dropped = {i for i, k in zip(picked, keep, strict=True) if not k}
        yield from (r for i, r in enumerate(run) if i not in dropped)
    details.update(classifier=metrics, pareto_alpha=qc.pareto_alpha)
    details.update(_quality_report(recs, role, np.concatenate(scores), np.concatenate(kept)))


def _quality_report(recs: Iterable[dict], role: dict[str, str], scores: np.ndarray, keep: np.ndarray) -> dict:
    """Per raw source: documents, kept and mean score; the three lowest and highest scored documents."""
    order = np.argsort(scores)
    shown = {int(i) for i in [*order[:3], *order[::-1][:3]]}
    per_source = collections.defaultdict(lambda: {"docs": 0, "kept": 0, "mean_score": 0.0})
    snippets = {}
    for k, r in enumerate(r for r in recs if role[r["source"]] == "raw"):
        row = per_source[r["source"]]
        row["docs"] += 1
        row["kept"] += int(keep[k])
        row["mean_score"] += float(scores[k])
        if k in shown:
            snippets[k] = snippet(r)
    for row in per_source.values():
        row["mean_score"] /= max(row["docs"], 1)
    return {
        "raw_sources": dict(per_source),
        "lowest_scored": [{**snippets[int(i)], "score": float(scores[i])} for i in order[:3]],
        "highest_scored": [{**snippets[int(i)], "score": float(scores[i])} for i in order[::-1][:3]],
    }


def quality_model(
    recs: Iterable[dict], role: dict[str, str], qc: quality.QualityConfig
) -> tuple[quality.QualityModel, dict]:
    """The classifier trained on the sample of curated (positive) and raw (negative) documents: a pass for the
    sample keys and sizes, one to collect the sampled texts."""
    keys: dict[str, list[np.ndarray]] = {"curated": [np.zeros(0)], "raw": [np.zeros(0)]}
    sizes: dict[str, list[int]] = {"curated": [], "raw": []}
    for run, _ in stage_io.chunks(recs, lambda r: True):
        for c in keys:  # a key is a hash of its text alone: any batching gives the same keys
            texts = [r["text"] for r in run if role[r["source"]] == c]
            keys[c].append(quality.sample_keys(texts, qc.seed))
            sizes[c].extend(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    want = {
        c: set(
            quality.training_sample(np.concatenate(keys[c]), sizes[c], qc.max_train_docs, qc.max_train_bytes).tolist()
        )
        for c in keys
    }
    del keys, sizes
    seen = dict.fromkeys(want, 0)
    texts: dict[str, list[str]] = {c: [] for c in want}
    for r in recs:
        c = role[r["source"]]
        if c in want:
            if seen[c] in want[c]:
                texts[c].append(r["text"])
            seen[c] += 1
    return quality.train(texts["curated"], texts["raw"], qc)


def stage_decontam(recs: Iterable[dict], ctx: Context, details: dict) -> Iterator[dict]:
    dc = decontam.DecontamConfig.from_config(ctx.cfg.decontam)
    if not dc.task_files:
        details["skipped"] = "config.data_prep.decontam.task_files is empty"
        yield from recs
        return
    yield from decontam.decontaminate_stream(recs, decontam.eval_ngrams(dc), dc, details)


def stage_mix(recs: Iterable[dict], ctx: Context, details: dict) -> Iterator[dict]:
    p = ctx.cfg
    weights = {s.name: s.weight for s in ctx.sources}
    settings = (p.val_fraction, p.mix.total_bytes, p.seed, p.mix.max_epochs)
    placed = mix.stream(recs, [s.name for s in ctx.sources], weights, settings, details)
    yield from stage_io.reorder(placed)


STAGE_FNS: dict[str, Callable[[Iterable[dict], Context, dict], Iterator[dict]]] = {
    "read": stage_read,
    "normalize": stage_normalize,
    "filter": stage_filter,
    "exact_dedup": stage_exact_dedup,
    "fuzzy_dedup": stage_fuzzy_dedup,
    "quality": stage_quality,
    "decontam": stage_decontam,
    "mix": stage_mix,
}


# --------------------------------------------------------------------------------------------------------------
# Resumable runner


def _file_stamp(path: str) -> list:
    return [path, *fs.stamp(path)]


def stage_settings(ctx: Context, name: str) -> dict:
    """Everything besides the previous stage's output that determines a stage's output."""
    p = ctx.cfg
    if name == "read":
        files = [_file_stamp(f) for s in ctx.sources for f in readers.source_files(s)]
        return {"sources": [dataclasses.asdict(s) for s in ctx.sources], "bad_utf8": p.on_bad_utf8, "files": files}
    if name == "normalize":
        return {"normalize": p.clean.normalize}
    if name == "filter":
        return {"clean": p.clean.to_dict(), "filters": {s.name: s.filters for s in ctx.sources}}
    if name == "exact_dedup":
        return {"exact": p.dedup.exact}
    if name == "fuzzy_dedup":
        return {"dedup": p.dedup.to_dict()}
    if name == "quality":
        return {"quality": p.quality.to_dict(), "roles": {s.name: s.role for s in ctx.sources}}
    if name == "decontam":
        files = [_file_stamp(readers.resolve_path(f)) for f in p.decontam.task_files]
        return {"decontam": {**p.decontam.to_dict(), "task_files": list(p.decontam.task_files)}, "files": files}
    if name == "mix":
        weights = {s.name: s.weight for s in ctx.sources}
        return {"mix": p.mix.to_dict(), "val_fraction": p.val_fraction, "seed": p.seed, "weights": weights}
    raise KeyError(name)


def _fingerprint(previous: str, settings: dict) -> str:
    return hashlib.sha256((previous + json.dumps(settings, sort_keys=True, default=str)).encode()).hexdigest()[:16]


def _paths(ctx: Context, k: int, name: str) -> tuple[str, str]:
    """(the prefix of a stage's output parts, its marker file)."""
    base = fs.join(ctx.out, "stages", f"{k:02d}_{name}")
    return base, base + ".json"


def _load_stage(ctx: Context, k: int, name: str) -> stage_io.Parts:
    """The saved output of a stage, read lazily (each iteration reads its parts again)."""
    prefix, _ = _paths(ctx, k, name)
    return stage_io.Parts(prefix, _marker(ctx, k, name)["parts"])


def _marker(ctx: Context, k: int, name: str) -> dict | None:
    prefix, meta = _paths(ctx, k, name)
    if not fs.exists(meta):
        return None
    marker = json.loads(fs.read_text(meta))
    if not all(fs.exists(stage_io.part_path(prefix, i)) for i in range(marker.get("parts", -1))):
        return None  # a part is gone (or a marker of the one-file layout): the stage is redone
    return marker if "parts" in marker else None


def _run_stage(ctx: Context, k: int, name: str, inp: Iterable[dict], before: dict, fp: str) -> tuple[dict, dict]:
    """Streams one stage from its input into its parts, then writes its marker (last: a marker names complete
    parts); returns (its report row, the tally of its output)."""
    prefix, meta = _paths(ctx, k, name)
    after: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    details: dict = {}
    t0 = time.perf_counter()
    with stage_io.PartWriter(prefix, STAGE_PART_DOCS) as writer:
        for r in STAGE_FNS[name](inp, ctx, details):
            writer.write(r)
            row = after[r["source"]]
            row[0] += 1
            row[1] += len(r["text"].encode("utf-8", "surrogatepass"))
        parts = writer.close()
    row = stage_row(name, before, after, time.perf_counter() - t0, details)
    fs.write_atomic(meta, json.dumps({"fingerprint": fp, "row": row, "parts": parts}))
    return row, after


def run_stages(ctx: Context, progress: tqdm | None = None) -> tuple[stage_io.Parts, list[dict], str]:
    """Runs (or resumes) every stage, each streaming the saved output of the one before; returns (the final
    records, read lazily; one report row per stage; the final fingerprint)."""
    fps, fp = [], "gptx-prepare-v2"  # v2: damaged archives are cut where they broke (readers._File)
    for name in STAGES:
        fp = _fingerprint(fp, stage_settings(ctx, name))
        fps.append(fp)
    done = -1
    for k, name in enumerate(STAGES):
        marker = _marker(ctx, k, name)
        if marker is None or marker["fingerprint"] != fps[k]:
            break
        done = k
    inp: Iterable[dict] = _load_stage(ctx, done, STAGES[done]) if done >= 0 else stage_io.Empty()
    before = tally(inp) if done < len(STAGES) - 1 else {}
    rows = []
    for k, name in enumerate(STAGES):
        if progress is not None:
            progress.set_description(f"prepare: {name}")
        if k <= done:
            rows.append({**_marker(ctx, k, name)["row"], "resumed": True})
        else:
            row, before = _run_stage(ctx, k, name, inp, before, fps[k])
            inp = _load_stage(ctx, k, name)
            rows.append({**row, "resumed": False})
        if progress is not None:
            progress.update(1)
            if not progress.disable:
                progress.write(_progress_line(rows[-1]))
    return inp, rows, fps[-1]


def _progress_line(row: dict) -> str:
    how = "resumed" if row["resumed"] else f"{row['seconds']:.1f} s"
    return (
        f"  {row['stage']:<12} {row['docs_in']:>9,} -> {row['docs_out']:>9,} docs  "
        f"{row['bytes_in'] / 1e6:9.2f} -> {row['bytes_out'] / 1e6:9.2f} MB  ({how})"
    )


def write_shards(ctx: Context, recs: Iterable[dict], fingerprint: str, progress: tqdm | None = None) -> dict:
    """Writes train/val shards of `shard_docs` records, streaming them from `recs` (iterated once to count each
    split, once per split to write); shards recorded as done for this fingerprint are kept."""
    fp = _fingerprint(fingerprint, {"shard_docs": ctx.cfg.shard_docs})
    manifest_path = fs.join(ctx.out, "stages", "shards.json")
    manifest = {"fingerprint": fp, "done": []}
    if fs.exists(manifest_path):
        old = json.loads(fs.read_text(manifest_path))
        if old.get("fingerprint") == fp:
            manifest = old
    done = set(manifest["done"])
    n = collections.Counter(r["split"] for r in recs)
    size = ctx.cfg.shard_docs
    counts = {split: max(1, -(-n[split] // size)) if n[split] else 0 for split in records.SPLITS}
    plan = [records.shard_name(split, i, counts[split]) for split in records.SPLITS for i in range(counts[split])]
    for split in records.SPLITS:  # shards of an earlier, different run would mix into this corpus
        for path in records.shard_files(ctx.out, split):
            if fs.basename(path) not in plan or fs.basename(path) not in done:
                fs.remove(path)
    written = skipped = 0
    for split in records.SPLITS:
        rs = ({k: v for k, v in r.items() if k != "split"} for r in recs if r["split"] == split)
        for i in range(counts[split]):
            name = records.shard_name(split, i, counts[split])
            path, shard = fs.join(ctx.out, name), itertools.islice(rs, size)
            if name in done and fs.exists(path):
                collections.deque(shard, maxlen=0)  # past the records of a finished shard
                skipped += 1
                continue
            records.write_shard(path, shard)
            manifest["done"] = sorted(done | {name})
            done.add(name)
            fs.write_atomic(manifest_path, json.dumps(manifest))
            written += 1
    if progress is not None:
        progress.update(1)
    return {
        "train_shards": counts["train"],
        "val_shards": counts["val"],
        "train_docs": n["train"],
        "val_docs": n["val"],
        "written": written,
        "skipped": skipped,
    }


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """`gptx.main prepare`: runs or resumes the stages of config.data_prep; returns the report (also written
    to OUTPUT/report.json, with a readable OUTPUT/summary.md)."""
    if cfg.data_prep.get("runner", "local") == "beam":
        validate_data_prep(cfg)
        try:
            from gptx.data.beam import pipeline
        except ImportError as e:
            raise ConfigError(
                f"config.data_prep.runner=beam needs Apache Beam ({e}): pip install -e '.[beam]'"
            ) from None
        return pipeline.run(cfg, workdir)
    sources = validate_data_prep(cfg)
    out = cfg.data_prep.output_dir or workdir
    fs.makedirs(fs.join(out, "stages"))
    ctx = Context(cfg.data_prep, sources, out)
    t0 = time.perf_counter()
    with tqdm(total=len(STAGES) + 1, disable=not cfg.data_prep.progress, dynamic_ncols=True) as bar:
        recs, rows, fp = run_stages(ctx, bar)
        bar.set_description("prepare: shards")
        shards = write_shards(ctx, recs, fp, bar)
    for warning in summary.warnings(rows):  # a resumed read stage repeats its warnings
        logging.warning("prepare: %s", warning)
    return write_report(cfg, out, "local", time.perf_counter() - t0, rows, shards)
