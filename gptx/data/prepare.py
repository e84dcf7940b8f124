"""`gptx.main prepare`: GPT-3's data preparation as a chain of stages, written to ArrayRecord shards.

    read -> normalize -> filter -> exact_dedup -> fuzzy_dedup -> quality -> decontam -> mix -> shards

Every stage is a function from a list of records {"id", "source", "text"} to a list of records plus the details
it reports; the heavy ones work ~1 MB of text at a time and the dedup stages hold hashes and signatures, so
memory stays a small multiple of the text. The runner counts documents and bytes in and out of each stage per
source, saves each stage's output under OUTPUT/stages/ in parts of STAGE_PART_DOCS records with a fingerprint
of everything that determines it (settings of this and all earlier stages, sizes and times of the input
files), and on a rerun resumes after the last stage whose fingerprint still matches. Shards are written one by
one and recorded as done, so an interrupted run does not rewrite finished shards. Deduplication runs over all
sources together and keeps the copy from the earliest source in config order, so list curated sources first
(GPT-3 also removed WebText's documents from Common Crawl). `config.data_prep.runner=beam` runs the same
stages on Apache Beam (gptx.data.beam) with the same answer.
The result: OUTPUT/train-*.array_record, val-*.array_record, report.json, summary.md and quality_model.npz;
train on it with --config.data.corpus=OUTPUT.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import io
import json
import time
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from gptx import fs
from gptx.config import ConfigError
from gptx.data import clean, decontam, dedup, mix, quality, readers, records, summary
from gptx.data.prepare_plan import STAGES, Context, snippet, stage_row, tally, validate_data_prep
from gptx.train import logs

STAGE_PART_DOCS = 50_000  # records per file of a stage's saved output


# --------------------------------------------------------------------------------------------------------------
# Stages: (records, ctx) -> (records, details)


def stage_read(_: list[dict], ctx: Context) -> tuple[list[dict], dict]:
    out: list[dict] = []
    bad = {}
    for src in ctx.sources:
        recs, stats = readers.read_source(src, ctx.cfg.on_bad_utf8)
        if not recs:
            found = ", ".join(f"{k} {v}" for k, v in stats.bad.items())
            stats.warnings.append(
                f"source {src.name!r} yielded 0 documents from {src.path}" + (f" (bad input: {found})" if found else "")
            )
        out.extend(recs)
        bad[src.name] = stats.to_dict()
    return out, {"sources": bad}


def stage_normalize(recs: list[dict], ctx: Context) -> tuple[list[dict], dict]:
    if not ctx.cfg.clean.normalize:
        return recs, {"skipped": "config.data_prep.clean.normalize is False"}
    changed = 0
    for r in recs:  # in place: the runner hands each stage records it no longer needs, so no second copy
        text = clean.normalize(r["text"])
        changed += text != r["text"]
        r["text"] = text
    kept = [r for r in recs if r["text"]]
    return kept, {"changed": changed, "empty_after_normalize": len(recs) - len(kept)}


def stage_filter(recs: list[dict], ctx: Context) -> tuple[list[dict], dict]:
    fc = clean.FilterConfig.from_config(ctx.cfg.clean)
    idx = [i for i, r in enumerate(recs) if ctx.source(r["source"]).filters]
    reasons: list[str | None] = [None] * len(recs)
    for i, why in zip(idx, clean.filter_reasons([recs[i]["text"] for i in idx], fc), strict=True):
        reasons[i] = why
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    examples: dict[str, dict] = {}
    for r, why in zip(recs, reasons, strict=True):
        if why:
            counts[r["source"]][why] += 1
            examples.setdefault(why, snippet(r))
    kept = [r for r, why in zip(recs, reasons, strict=True) if why is None]
    return kept, {"reasons": {s: dict(c) for s, c in counts.items()}, "examples": examples}


def _cluster_report(recs: list[dict], clusters: list[list[int]], top: int = 5) -> dict:
    largest = sorted(clusters, key=len, reverse=True)[:top]
    return {
        "clusters": len(clusters),
        "docs_removed": sum(len(c) - 1 for c in clusters),
        "cross_source_clusters": sum(len({recs[i]["source"] for i in c}) > 1 for c in clusters),
        "examples": [{"size": len(c), "members": [snippet(recs[i]) for i in c[:3]]} for c in largest],
    }


def _drop_clustered(recs: list[dict], clusters: list[list[int]]) -> list[dict]:
    drop = {i for c in clusters for i in c[1:]}  # the first (earliest source in config order) is kept
    return [r for i, r in enumerate(recs) if i not in drop]


def stage_exact_dedup(recs: list[dict], ctx: Context) -> tuple[list[dict], dict]:
    if not ctx.cfg.dedup.exact:
        return recs, {"skipped": "config.data_prep.dedup.exact is False"}
    clusters = dedup.exact_clusters([r["text"] for r in recs])
    return _drop_clustered(recs, clusters), _cluster_report(recs, clusters)


def stage_fuzzy_dedup(recs: list[dict], ctx: Context) -> tuple[list[dict], dict]:
    if not ctx.cfg.dedup.fuzzy:
        return recs, {"skipped": "config.data_prep.dedup.fuzzy is False"}
    dc = dedup.DedupConfig.from_config(ctx.cfg.dedup)
    res = dedup.near_duplicates([r["text"] for r in recs], dc)
    details = {
        "bands": res.bands,
        "rows": res.rows,
        "num_perm": dc.num_perm,
        "threshold": dc.threshold,
        "candidates_checked": res.checked,
        "false_positives_rejected": res.rejected,
        **_cluster_report(recs, res.clusters),
    }
    return _drop_clustered(recs, res.clusters), details


def stage_quality(recs: list[dict], ctx: Context) -> tuple[list[dict], dict]:
    qc = quality.QualityConfig.from_config(ctx.cfg.quality)
    role = {s.name: s.role for s in ctx.sources}
    raw = [i for i, r in enumerate(recs) if role[r["source"]] == "raw"]
    if not qc.enabled or not raw:
        why = "config.data_prep.quality.enabled is False" if not qc.enabled else "no source has role 'raw'"
        return recs, {"skipped": why}
    curated = [r["text"] for r in recs if role[r["source"]] == "curated"]
    negatives = [recs[i]["text"] for i in raw]
    pos = training_texts(curated, qc)
    model, metrics = quality.train(pos, training_texts(negatives, qc), qc)
    saved = io.BytesIO()
    model.save(saved)
    fs.write_atomic(fs.join(ctx.out, "quality_model.npz"), saved.getvalue())
    texts = [recs[i]["text"] for i in raw]
    scores = model.score(texts)
    keep = quality.pareto_keep(texts, scores, qc.pareto_alpha, qc.seed)
    drop = {raw[i] for i in np.flatnonzero(~keep)}
    per_source = collections.defaultdict(lambda: {"docs": 0, "kept": 0, "mean_score": 0.0})
    for i, s, k in zip(raw, scores, keep, strict=True):
        row = per_source[recs[i]["source"]]
        row["docs"] += 1
        row["kept"] += int(k)
        row["mean_score"] += float(s)
    for row in per_source.values():
        row["mean_score"] /= max(row["docs"], 1)
    order = np.argsort(scores)
    details = {
        "classifier": metrics,
        "pareto_alpha": qc.pareto_alpha,
        "raw_sources": dict(per_source),
        "lowest_scored": [{**snippet(recs[raw[i]]), "score": float(scores[i])} for i in order[:3]],
        "highest_scored": [{**snippet(recs[raw[i]]), "score": float(scores[i])} for i in order[::-1][:3]],
    }
    return [r for i, r in enumerate(recs) if i not in drop], details


def training_texts(texts: list[str], qc: quality.QualityConfig) -> list[str]:
    """The classifier's training sample of one class (`quality.training_sample`), in corpus order."""
    sizes = [len(t.encode("utf-8", "surrogatepass")) for t in texts]
    keys = quality.sample_keys(texts, qc.seed)
    return [texts[i] for i in quality.training_sample(keys, sizes, qc.max_train_docs, qc.max_train_bytes)]


def stage_decontam(recs: list[dict], ctx: Context) -> tuple[list[dict], dict]:
    dc = decontam.DecontamConfig.from_config(ctx.cfg.decontam)
    if not dc.task_files:
        return recs, {"skipped": "config.data_prep.decontam.task_files is empty"}
    res = decontam.decontaminate(recs, decontam.eval_ngrams(dc), dc)
    return res.records, res.report


def stage_mix(recs: list[dict], ctx: Context) -> tuple[list[dict], dict]:
    by_source: dict[str, list[dict]] = {s.name: [] for s in ctx.sources}
    for r in recs:
        by_source[r["source"]].append(r)
    train_parts, val = {}, []
    for k, (name, rs) in enumerate(by_source.items()):
        train_parts[name], held = mix.hold_out(rs, ctx.cfg.val_fraction, ctx.cfg.seed + k)
        val.extend(held)
    weights = {s.name: s.weight for s in ctx.sources}
    mixed, rows = mix.mix(train_parts, weights, ctx.cfg.mix.total_bytes, ctx.cfg.seed, ctx.cfg.mix.max_epochs)
    out = [{**r, "split": "train"} for r in mixed] + [{**r, "split": "val"} for r in val]
    return out, {"sources": rows, "val_docs": len(val)}


STAGE_FNS: dict[str, Callable[[list[dict], Context], tuple[list[dict], dict]]] = {
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


def _part(prefix: str, i: int) -> str:
    return f"{prefix}-part-{i:05d}.jsonl.gz"


def _save_stage(ctx: Context, k: int, name: str, recs: list[dict], marker: dict) -> None:
    """The stage's records in parts of STAGE_PART_DOCS, then its marker (last: a marker names complete parts)."""
    prefix, meta = _paths(ctx, k, name)
    n_parts = max(1, -(-len(recs) // STAGE_PART_DOCS))
    for i in range(n_parts):
        with fs.local_output(_part(prefix, i)) as tmp, _open_text(tmp, compress=True) as f:
            _write_jsonl(f, recs[i * STAGE_PART_DOCS : (i + 1) * STAGE_PART_DOCS])
    with fs.local_output(meta) as tmp, _open_text(tmp) as f:
        f.write(json.dumps({**marker, "parts": n_parts}))


def _open_text(path: str, compress: bool = False):
    """A local text file for writing, gzip-compressed (level 1) with `compress`."""
    return gzip.open(path, "wt", compresslevel=1, encoding="utf-8") if compress else open(path, "w")


def _write_jsonl(f, recs: list[dict]) -> None:
    for r in recs:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _load_stage(ctx: Context, k: int, name: str) -> list[dict]:
    prefix, _ = _paths(ctx, k, name)
    recs = []
    for i in range(_marker(ctx, k, name)["parts"]):
        with fs.open_file(_part(prefix, i), "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            recs.extend(json.loads(line) for line in f)
    return recs


def _marker(ctx: Context, k: int, name: str) -> dict | None:
    prefix, meta = _paths(ctx, k, name)
    if not fs.exists(meta):
        return None
    marker = json.loads(fs.read_text(meta))
    if not all(fs.exists(_part(prefix, i)) for i in range(marker.get("parts", -1))):
        return None  # a part is gone (or a marker of the one-file layout): the stage is redone
    return marker if "parts" in marker else None


def run_stages(ctx: Context, progress: tqdm | None = None) -> tuple[list[dict], list[dict], str]:
    """Runs (or resumes) every stage; returns (final records, one report row per stage, final fingerprint)."""
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
    recs = _load_stage(ctx, done, STAGES[done]) if done >= 0 else []
    rows = []
    for k, name in enumerate(STAGES):
        if progress is not None:
            progress.set_description(f"prepare: {name}")
        if k <= done:
            rows.append({**_marker(ctx, k, name)["row"], "resumed": True})
        else:
            before, t0 = tally(recs), time.perf_counter()
            recs, details = STAGE_FNS[name](recs, ctx)
            row = stage_row(name, before, tally(recs), time.perf_counter() - t0, details)
            _save_stage(ctx, k, name, recs, {"fingerprint": fps[k], "row": row})
            rows.append({**row, "resumed": False})
        if progress is not None:
            progress.update(1)
            if not progress.disable:
                progress.write(_progress_line(rows[-1]))
    return recs, rows, fps[-1]


def _progress_line(row: dict) -> str:
    how = "resumed" if row["resumed"] else f"{row['seconds']:.1f} s"
    return (
        f"  {row['stage']:<12} {row['docs_in']:>9,} -> {row['docs_out']:>9,} docs  "
        f"{row['bytes_in'] / 1e6:9.2f} -> {row['bytes_out'] / 1e6:9.2f} MB  ({how})"
    )


def write_shards(ctx: Context, recs: list[dict], fingerprint: str, progress: tqdm | None = None) -> dict:
    """Writes train/val shards of `shard_docs` records; shards recorded as done for this fingerprint are kept."""
    fp = _fingerprint(fingerprint, {"shard_docs": ctx.cfg.shard_docs})
    manifest_path = fs.join(ctx.out, "stages", "shards.json")
    manifest = {"fingerprint": fp, "done": []}
    if fs.exists(manifest_path):
        old = json.loads(fs.read_text(manifest_path))
        if old.get("fingerprint") == fp:
            manifest = old
    done = set(manifest["done"])
    plan = []
    for split in records.SPLITS:
        rs = [{k: v for k, v in r.items() if k != "split"} for r in recs if r["split"] == split]
        count = max(1, -(-len(rs) // ctx.cfg.shard_docs)) if rs else 0
        plan += [
            (records.shard_name(split, i, count), rs[i * ctx.cfg.shard_docs : (i + 1) * ctx.cfg.shard_docs])
            for i in range(count)
        ]
    wanted = {name for name, _ in plan}
    for split in records.SPLITS:  # shards of an earlier, different run would mix into this corpus
        for path in records.shard_files(ctx.out, split):
            if fs.basename(path) not in wanted or fs.basename(path) not in done:
                fs.remove(path)
    written = skipped = 0
    for name, rs in plan:
        path = fs.join(ctx.out, name)
        if name in done and fs.exists(path):
            skipped += 1
            continue
        records.write_shard(path, rs)
        manifest["done"] = sorted(done | {name})
        done.add(name)
        fs.write_atomic(manifest_path, json.dumps(manifest))
        written += 1
    if progress is not None:
        progress.update(1)
    n = collections.Counter(r["split"] for r in recs)
    return {
        "train_shards": sum(name.startswith("train") for name, _ in plan),
        "val_shards": sum(name.startswith("val") for name, _ in plan),
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
    report = {
        "output_dir": fs.absolute(out),
        "runner": "local",
        "seconds": round(time.perf_counter() - t0, 2),
        "stages": rows,
        "shards": shards,
        "config": cfg.data_prep.to_dict(),
    }
    logs.write_json(fs.join(out, "report.json"), report)
    fs.write_atomic(fs.join(out, "summary.md"), summary.markdown(report))
    return report
