"""`gptx.main prepare`: GPT-3's data preparation as a chain of stages, written to ArrayRecord shards.

    read -> normalize -> filter -> exact_dedup -> fuzzy_dedup -> quality -> decontam -> mix -> shards

Every stage is a function from a list of records {"id", "source", "text"} to a list of records plus the details
it reports. The runner counts documents and bytes in and out of each stage per source, saves each stage's output
under OUTPUT/stages/ with a fingerprint of everything that determines it (settings of this and all earlier
stages, sizes and times of the input files), and on a rerun resumes after the last stage whose fingerprint
still matches. Shards are written one by one and recorded as done, so an interrupted run does not rewrite
finished shards. Deduplication runs over all sources together and keeps the copy from the earliest source in
config order, so list curated sources first (GPT-3 also removed WebText's documents from Common Crawl).
The result: OUTPUT/train-*.array_record, val-*.array_record, report.json, summary.md and quality_model.npz;
train on it with --config.data.corpus=OUTPUT.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import json
import os
import time
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from gptx.config import ConfigError
from gptx.data import clean, decontam, dedup, mix, quality, readers, records, summary
from gptx.train import logs

STAGES = ("read", "normalize", "filter", "exact_dedup", "fuzzy_dedup", "quality", "decontam", "mix")
SNIPPET = 120  # characters of a document shown in the report


@dataclasses.dataclass
class Context:
    """What every stage can see: the data_prep config, its sources, the output directory."""

    cfg: ml_collections.ConfigDict
    sources: list[readers.Source]
    out: str

    def source(self, name: str) -> readers.Source:
        return next(s for s in self.sources if s.name == name)


# --------------------------------------------------------------------------------------------------------------
# Config


def validate_data_prep(cfg: ml_collections.ConfigDict) -> list[readers.Source]:
    """The sources of config.data_prep, after checking every setting; errors name the key."""
    p = cfg.data_prep
    if not p.sources:
        raise ConfigError("config.data_prep.sources is empty: name at least one source (see configs/data.py)")
    sources = [readers.Source.from_dict(d, f"config.data_prep.sources[{i}]") for i, d in enumerate(p.sources)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"config.data_prep.sources: duplicate names in {names}")
    checks = [
        (p.on_bad_utf8 in ("repair", "skip"), "on_bad_utf8 must be repair or skip"),
        (0.0 <= p.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
        (p.shard_docs > 0, "shard_docs must be positive"),
        (0.0 <= p.clean.max_bad_char_ratio <= 1.0, "clean.max_bad_char_ratio must be in [0, 1]"),
        (0.0 < p.dedup.threshold <= 1.0, "dedup.threshold must be in (0, 1]"),
        (p.dedup.num_perm > 0 and p.dedup.ngram > 0, "dedup.num_perm and dedup.ngram must be positive"),
        (p.dedup.bands * p.dedup.rows <= p.dedup.num_perm, "dedup.bands * dedup.rows must be <= dedup.num_perm"),
        ((p.dedup.bands > 0) == (p.dedup.rows > 0), "dedup.bands and dedup.rows are set together (or both 0)"),
        (0.0 <= p.dedup.fn_weight <= 1.0, "dedup.fn_weight must be in [0, 1]"),
        (8 <= p.quality.hash_bits <= 26, "quality.hash_bits must be in [8, 26]"),
        (p.quality.pareto_alpha > 0, "quality.pareto_alpha must be positive"),
        (0.0 <= p.quality.heldout_fraction < 1.0, "quality.heldout_fraction must be in [0, 1)"),
        (p.decontam.mode in ("split", "drop"), "decontam.mode must be split or drop"),
        (0 < p.decontam.min_ngram <= p.decontam.ngram, "decontam.min_ngram must be in [1, decontam.ngram]"),
        (p.mix.total_bytes >= 0 and p.mix.max_epochs >= 0, "mix.total_bytes and mix.max_epochs must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"config.data_prep.{message}")
    roles = {s.role for s in sources}
    if p.quality.enabled and "raw" in roles and "curated" not in roles:
        raise ConfigError(
            "config.data_prep.quality.enabled needs a source with role 'curated' to train the classifier "
            "against the 'raw' ones (or set config.data_prep.quality.enabled=False)"
        )
    if not any(s.weight > 0 for s in sources):
        raise ConfigError("config.data_prep.sources: every weight is 0, nothing would be mixed")
    return sources


# --------------------------------------------------------------------------------------------------------------
# Stages: (records, ctx) -> (records, details)


def _snippet(r: dict) -> dict:
    text = r["text"].replace("\n", " ")
    return {"id": r["id"], "source": r["source"], "text": text[:SNIPPET] + ("…" if len(text) > SNIPPET else "")}


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
    out = [{**r, "text": clean.normalize(r["text"])} for r in recs]
    kept = [r for r in out if r["text"]]
    changed = sum(a["text"] != b["text"] for a, b in zip(recs, out, strict=True))
    return kept, {"changed": changed, "empty_after_normalize": len(out) - len(kept)}


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
            examples.setdefault(why, _snippet(r))
    kept = [r for r, why in zip(recs, reasons, strict=True) if why is None]
    return kept, {"reasons": {s: dict(c) for s, c in counts.items()}, "examples": examples}


def _cluster_report(recs: list[dict], clusters: list[list[int]], top: int = 5) -> dict:
    largest = sorted(clusters, key=len, reverse=True)[:top]
    return {
        "clusters": len(clusters),
        "docs_removed": sum(len(c) - 1 for c in clusters),
        "cross_source_clusters": sum(len({recs[i]["source"] for i in c}) > 1 for c in clusters),
        "examples": [{"size": len(c), "members": [_snippet(recs[i]) for i in c[:3]]} for c in largest],
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
    curated = [recs[i]["text"] for i, r in enumerate(recs) if role[r["source"]] == "curated"]
    model, metrics = quality.train(curated, [recs[i]["text"] for i in raw], qc)
    model.save(os.path.join(ctx.out, "quality_model.npz"))
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
        "lowest_scored": [{**_snippet(recs[raw[i]]), "score": float(scores[i])} for i in order[:3]],
        "highest_scored": [{**_snippet(recs[raw[i]]), "score": float(scores[i])} for i in order[::-1][:3]],
    }
    return [r for i, r in enumerate(recs) if i not in drop], details


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
    st = os.stat(path)
    return [path, st.st_size, int(st.st_mtime)]


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
    base = os.path.join(ctx.out, "stages", f"{k:02d}_{name}")
    return base + ".jsonl.gz", base + ".json"


def _save_stage(ctx: Context, k: int, name: str, recs: list[dict], marker: dict) -> None:
    data, meta = _paths(ctx, k, name)
    for path, write in ((data, lambda f: _write_jsonl(f, recs)), (meta, lambda f: f.write(json.dumps(marker)))):
        tmp = f"{path}.tmp{os.getpid()}"
        with gzip.open(tmp, "wt", compresslevel=1, encoding="utf-8") if path.endswith(".gz") else open(tmp, "w") as f:
            write(f)
        os.replace(tmp, path)


def _write_jsonl(f, recs: list[dict]) -> None:
    for r in recs:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _load_stage(ctx: Context, k: int, name: str) -> list[dict]:
    with gzip.open(_paths(ctx, k, name)[0], "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _marker(ctx: Context, k: int, name: str) -> dict | None:
    data, meta = _paths(ctx, k, name)
    if not (os.path.exists(data) and os.path.exists(meta)):
        return None
    with open(meta) as f:
        return json.load(f)


def _tally(recs: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in recs:
        row = out[r["source"]]
        row[0] += 1
        row[1] += len(r["text"].encode("utf-8", "surrogatepass"))
    return out


def _stage_row(name: str, before: dict, after: dict, seconds: float, details: dict) -> dict:
    sources = list(dict.fromkeys([*before, *after]))
    per_source = {
        s: {
            "docs_in": before.get(s, [0, 0])[0],
            "docs_out": after.get(s, [0, 0])[0],
            "bytes_in": before.get(s, [0, 0])[1],
            "bytes_out": after.get(s, [0, 0])[1],
        }
        for s in sources
    }
    totals = {k: sum(v[k] for v in per_source.values()) for k in ("docs_in", "docs_out", "bytes_in", "bytes_out")}
    return {"stage": name, **totals, "seconds": round(seconds, 3), "per_source": per_source, "details": details}


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
            before, t0 = _tally(recs), time.perf_counter()
            recs, details = STAGE_FNS[name](recs, ctx)
            row = _stage_row(name, before, _tally(recs), time.perf_counter() - t0, details)
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
    manifest_path = os.path.join(ctx.out, "stages", "shards.json")
    manifest = {"fingerprint": fp, "done": []}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f)
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
            if os.path.basename(path) not in wanted or os.path.basename(path) not in done:
                os.remove(path)
    written = skipped = 0
    for name, rs in plan:
        path = os.path.join(ctx.out, name)
        if name in done and os.path.exists(path):
            skipped += 1
            continue
        records.write_shard(path, rs)
        manifest["done"] = sorted(done | {name})
        done.add(name)
        tmp = f"{manifest_path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(manifest, f)
        os.replace(tmp, manifest_path)
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
    sources = validate_data_prep(cfg)
    out = cfg.data_prep.output_dir or workdir
    os.makedirs(os.path.join(out, "stages"), exist_ok=True)
    ctx = Context(cfg.data_prep, sources, out)
    t0 = time.perf_counter()
    with tqdm(total=len(STAGES) + 1, disable=not cfg.data_prep.progress, dynamic_ncols=True) as bar:
        recs, rows, fp = run_stages(ctx, bar)
        bar.set_description("prepare: shards")
        shards = write_shards(ctx, recs, fp, bar)
    for warning in summary.warnings(rows):  # a resumed read stage repeats its warnings
        logging.warning("prepare: %s", warning)
    report = {
        "output_dir": os.path.abspath(out),
        "seconds": round(time.perf_counter() - t0, 2),
        "stages": rows,
        "shards": shards,
        "config": cfg.data_prep.to_dict(),
    }
    logs.write_json(os.path.join(out, "report.json"), report)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary.markdown(report))
    return report
