"""The readable Markdown summary of a `prepare` report (report.json holds everything; this is the overview)."""

from __future__ import annotations


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def filter_section(report: dict) -> str:
    """Documents each heuristic filter removed, per source (the first threshold a document breaks)."""
    reasons = _details(report, "filter").get("reasons", {})
    names = sorted({r for counts in reasons.values() for r in counts})
    if not names:
        return "No document failed a heuristic filter.\n"
    rows = [[s, *(f"{counts.get(r, 0):,}" for r in names)] for s, counts in reasons.items()]
    return _table(["source", *names], rows)


def stage_table(report: dict) -> str:
    rows = [
        [
            s["stage"],
            f"{s['docs_in']:,}",
            f"{s['docs_out']:,}",
            _mb(s["bytes_in"]),
            _mb(s["bytes_out"]),
            "resumed" if s.get("resumed") else f"{s['seconds']:.1f}",
        ]
        for s in report["stages"]
    ]
    return _table(["stage", "docs in", "docs out", "MB in", "MB out", "seconds"], rows)


def source_table(report: dict) -> str:
    """Documents of each source left after each stage."""
    stages = report["stages"]
    sources = list(stages[0]["per_source"]) if stages else []
    rows = [[s, *(f"{st['per_source'].get(s, {}).get('docs_out', 0):,}" for st in stages)] for s in sources]
    return _table(["source", *(st["stage"] for st in stages)], rows)


def _details(report: dict, name: str) -> dict:
    return next((s["details"] for s in report["stages"] if s["stage"] == name), {})


def warnings(stages: list[dict]) -> list[str]:
    """What reading found that needs a person: sources that yielded nothing, damaged files."""
    read = next((s["details"] for s in stages if s["stage"] == "read"), {})
    return [w for st in read.get("sources", {}).values() for w in st.get("warnings", [])]


def bad_input(report: dict) -> str:
    rows = []
    for name, st in _details(report, "read").get("sources", {}).items():
        bad = ", ".join(f"{k} {v}" for k, v in st["bad"].items()) or "none"
        rows.append([name, f"{st['documents']:,}", _mb(st["bytes"]), bad, "; ".join(st["examples"][:3])])
    table = _table(["source", "documents", "MB", "bad input", "first locations"], rows)
    return table + "".join(f"\n**Warning**: {w}\n" for w in warnings(report["stages"]))


def dedup_section(report: dict) -> str:
    parts = []
    for name, title in (("exact_dedup", "Exact duplicates"), ("fuzzy_dedup", "Near duplicates (MinHash-LSH)")):
        d = _details(report, name)
        if not d or "skipped" in d:
            parts.append(f"**{title}**: skipped ({d.get('skipped', 'not run')}).\n")
            continue
        lsh = ""
        if name == "fuzzy_dedup":
            lsh = (
                f" {d['num_perm']} hashes as {d['bands']} bands x {d['rows']} rows, Jaccard >= {d['threshold']}; "
                f"{d['candidates_checked']:,} candidate pairs checked, {d['false_positives_rejected']:,} rejected."
            )
        parts.append(
            f"**{title}**: {d['clusters']:,} clusters, {d['docs_removed']:,} documents removed "
            f"({d['cross_source_clusters']} clusters span sources).{lsh}\n"
        )
        for ex in d["examples"][:3]:
            members = "; ".join(f"`{m['id']}` {m['text'][:60]!r}" for m in ex["members"])
            parts.append(f"- {ex['size']} copies: {members}")
        parts.append("")
    return "\n".join(parts) + "\n"


def quality_section(report: dict) -> str:
    d = _details(report, "quality")
    if not d or "skipped" in d:
        return f"Skipped ({d.get('skipped', 'not run')}).\n"
    m = d["classifier"]
    lines = [
        f"Logistic regression on hashed unigrams + bigrams, trained on {m['train_positives']:,} curated vs "
        f"{m['train_negatives']:,} raw documents. Held-out ({m.get('heldout', 0):,} documents): accuracy "
        f"{m.get('heldout_accuracy', float('nan')):.3f}, AUC {m.get('heldout_auc', float('nan')):.3f}. "
        f"Raw documents kept iff pareto({d['pareto_alpha']:g}) > 1 - score.\n",
        _table(
            ["raw source", "documents", "kept", "mean score"],
            [[s, r["docs"], r["kept"], f"{r['mean_score']:.3f}"] for s, r in d["raw_sources"].items()],
        ),
    ]
    return "\n".join(lines)


def decontam_section(report: dict) -> str:
    d = _details(report, "decontam")
    if not d or "skipped" in d:
        return f"Skipped ({d.get('skipped', 'not run')}).\n"
    head = (
        f"Mode {d['mode']}: {d['docs_contaminated']:,} of {d['docs_in']:,} documents contained evaluation "
        f"N-grams; {d['docs_split']:,} split into {d['pieces_kept']:,} pieces, {d['docs_dropped']:,} dropped; "
        f"{d['frequent_ngrams_ignored']:,} frequent N-grams ignored.\n"
    )
    rows = [
        [
            t["task"],
            t["n"],
            f"{t['examples']:,}",
            f"{t['too_short']:,}",
            t["docs_hit"],
            repr(t["matches"][0]["match"][:60]) if t["matches"] else "",
        ]
        for t in d["tasks"]
    ]
    return head + "\n" + _table(["task", "N", "examples", "too short", "docs hit", "a match"], rows)


def mix_section(report: dict) -> str:
    d = _details(report, "mix")
    rows = [
        [
            r["source"],
            f"{r['weight']:g}",
            f"{100 * r['share']:.1f}%",
            f"{r['docs_out']:,}",
            _mb(r["bytes_out"]),
            f"{r['epochs']:.2f}",
        ]
        for r in d.get("sources", [])
    ]
    return _table(["source", "weight", "share", "docs", "MB", "epochs"], rows)


def _runner_note(report: dict) -> str:
    if report.get("runner") != "beam":
        return ""
    return " Apache Beam runner: the stages ran fused in one pipeline, so per-stage seconds are not measured (0)."


def markdown(report: dict) -> str:
    """The whole summary."""
    sh = report["shards"]
    return "\n".join(
        [
            "# Data preparation\n",
            f"`{report['output_dir']}`: {sh['train_docs']:,} training documents in {sh['train_shards']} shards, "
            f"{sh['val_docs']:,} validation documents in {sh['val_shards']} shards ({sh['written']} shards "
            f"written, {sh['skipped']} already done); {report['seconds']:.1f} s.{_runner_note(report)}\n",
            "## Stages\n",
            stage_table(report),
            "## Documents per source after each stage\n",
            source_table(report),
            "## Input\n",
            bad_input(report),
            "## Heuristic filters\n",
            filter_section(report),
            "## Duplicates\n",
            dedup_section(report),
            "## Quality classifier (GPT-3)\n",
            quality_section(report),
            "## Contamination (N-gram overlap with evaluation files)\n",
            decontam_section(report),
            "## Mix\n",
            mix_section(report),
        ]
    )
