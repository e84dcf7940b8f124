"""What the two runners of `prepare` share: the stage names, the context every stage sees, the checked
config.data_prep, and the per-source tallies and rows of the report (gptx/data/prepare.py runs the stages in
one process; gptx/data/beam runs them on Apache Beam)."""

from __future__ import annotations

import collections
import dataclasses

import ml_collections

from gptx import fs
from gptx.config import ConfigError
from gptx.data import readers, summary
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
        (p.get("runner", "local") in ("local", "beam"), "runner must be local or beam"),
        (min(p.quality.max_train_docs, p.quality.max_train_bytes) >= 0, "quality.max_train_* must be >= 0"),
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
# The report


def snippet(r: dict) -> dict:
    """The id, source and first SNIPPET characters (newlines as spaces) of a record, for the report."""
    text = r["text"][:SNIPPET].replace("\n", " ")
    return {"id": r["id"], "source": r["source"], "text": text + ("…" if len(r["text"]) > SNIPPET else "")}


def tally(recs: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in recs:
        row = out[r["source"]]
        row[0] += 1
        row[1] += len(r["text"].encode("utf-8", "surrogatepass"))
    return out


def stage_row(name: str, before: dict, after: dict, seconds: float, details: dict) -> dict:
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


def write_report(
    cfg: ml_collections.ConfigDict, out: str, runner: str, seconds: float, rows: list[dict], shards: dict
) -> dict:
    """Writes OUT/report.json and the readable OUT/summary.md of a finished run; returns the report."""
    report = {
        "output_dir": fs.absolute(out),
        "runner": runner,
        "seconds": round(seconds, 2),
        "stages": rows,
        "shards": shards,
        "config": cfg.data_prep.to_dict(),
    }
    logs.write_json(fs.join(out, "report.json"), report)
    fs.write_atomic(fs.join(out, "summary.md"), summary.markdown(report))
    return report
