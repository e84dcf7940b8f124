"""`gptx.main prepare`: readers that survive bad input, the chained stages, the report, and resuming."""

import bz2
import csv
import gzip
import json
import lzma
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from gptx import config as config_lib
from gptx.config import ConfigError
from gptx.data import loader, mix, prepare, readers, records, sources

EVAL = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


def _write_bad_jsonl(path):
    """Six good documents, a broken JSON line, a non-UTF-8 line, an empty document and a record without text."""
    good = [json.dumps({"text": f"good document number {i} with some words"}) + "\n" for i in range(6)]
    lines = good[:2] + ['{"text": "broken\n'] + good[2:4] + ['{"text": "latin-1 caf\xe9 here"}\n']
    lines += good[4:] + ['{"text": "   "}\n', '{"title": "no text"}\n']
    data = b"".join(line.encode("latin-1" if "caf\xe9" in line else "utf-8") for line in lines)
    path.write_bytes(data)
    return path


def test_bad_lines_are_counted_with_file_and_line_and_everything_else_is_kept(tmp_path):
    path = _write_bad_jsonl(tmp_path / "bad.jsonl")
    recs, stats = readers.read_source(readers.Source("bad", str(path)), on_bad_utf8="repair")
    assert stats.bad == {"bad_json": 1, "non_utf8_repaired": 1, "empty": 1, "missing_field": 1}
    assert len(recs) == 7 and "latin-1 caf\ufffd here" in [r["text"] for r in recs]
    assert any(e.startswith(f"{path}:3") and "bad json" in e for e in stats.examples)  # file and line
    recs, stats = readers.read_source(readers.Source("bad", str(path)), on_bad_utf8="skip")
    assert stats.bad["non_utf8_skipped"] == 1 and len(recs) == 6
    assert [r["text"] for r in recs] == [f"good document number {i} with some words" for i in range(6)]


def test_every_format_and_compression_reads_the_same_documents(tmp_path):
    docs = [f'document {i}\nwith two lines, a comma and a "quote"' for i in range(5)]
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"t": d}) + "\n" for d in docs).encode()))
    (tmp_path / "a.txt.xz").write_bytes(lzma.compress("\n\n".join(docs).encode()))
    with bz2.open(tmp_path / "a.csv.bz2", "wt", newline="") as f:
        csv.writer(f).writerows([["id", "t"], *[[i, d] for i, d in enumerate(docs)]])
    records.write_shard(str(tmp_path / "a.array_record"), [{"t": d} for d in docs])
    for name, fmt in (
        ("a.jsonl.gz", "jsonl"),
        ("a.txt.xz", "text"),
        ("a.csv.bz2", "csv"),
        ("a.array_record", "arrayrecord"),
    ):
        assert readers.file_format(str(tmp_path / name)) == fmt
        recs, stats = readers.read_source(readers.Source("s", str(tmp_path / name), text_field="t"))
        assert [r["text"] for r in recs] == docs and not stats.bad, name
    with pytest.raises(FileNotFoundError, match="source .x.: no file .*nope.jsonl$"):
        readers.read_source(readers.Source("x", str(tmp_path / "nope.jsonl")))


def _corpus(tmp_path):
    """A curated and a raw source, with exact duplicates, bad input, and an evaluation file whose 14-word
    example is planted in one curated document."""
    shakespeare = [d for d in sources.read_documents("bundled:tinyshakespeare") if len(d.split()) > 20][:150]
    shakespeare[3] += " Trivia: " + EVAL + " and more words follow here."
    (tmp_path / "curated.txt").write_text("\n\n".join(shakespeare + shakespeare[:5]))  # 5 exact duplicates
    raw = [
        f"Copyright {1990 + i % 30} Example Corp <dev{i}@example.org>\nLicense: GPL-{2 + i % 2}+\n"
        f"Files: src/module{i}.c src/util{i % 7}.h\nThis package is distributed without any warranty. "
        f"See /usr/share/common-licenses/GPL-{2 + i % 2} for version {i % 5}."
        for i in range(120)
    ]
    lines = [json.dumps({"text": t}) for t in raw] + ['{"text": broken', json.dumps({"text": ""})]
    (tmp_path / "raw.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "task.jsonl").write_text(json.dumps({"question": EVAL, "answer": "x"}) + "\n")
    cfg = config_lib.default()
    cfg.data_prep.sources = (
        dict(name="curated", path=str(tmp_path / "curated.txt"), role="curated", weight=1.0),
        dict(name="raw", path=str(tmp_path / "raw.jsonl"), role="raw", weight=1.0),
    )
    cfg.data_prep.update(shard_docs=40, val_fraction=0.05, progress=False)
    cfg.data_prep.clean.max_symbol_ratio = 0.5
    cfg.data_prep.quality.update(hash_bits=14, heldout_fraction=0.2)
    cfg.data_prep.decontam.update(task_files=(str(tmp_path / "task.jsonl"),), mode="drop")
    cfg.data_prep.mix.max_epochs = 1.0
    return cfg


def test_prepare_chains_the_stages_reports_them_and_writes_loadable_shards(tmp_path):
    cfg = _corpus(tmp_path)
    out = tmp_path / "out"
    report = prepare.run(cfg, str(out))
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == list(prepare.STAGES)
    bad = stages["read"]["details"]["sources"]["raw"]["bad"]
    assert bad == {"bad_json": 1, "empty": 1} and stages["read"]["per_source"]["raw"]["docs_out"] == 120
    assert stages["exact_dedup"]["details"]["docs_removed"] >= 5
    assert stages["quality"]["details"]["classifier"]["heldout_auc"] > 0.9
    assert stages["decontam"]["details"]["docs_contaminated"] == 1  # the planted document
    for s in report["stages"]:  # documents and bytes flow from stage to stage
        assert s["docs_out"] <= s["docs_in"] or s["stage"] in ("read", "mix")
    corpus = sources.read_documents(str(out))
    train, val = loader.split_train_val(corpus, 0.5)  # the prepared splits, not a tail cut
    assert len(train) == report["shards"]["train_docs"] and len(val) == report["shards"]["val_docs"] > 0
    texts = [*train, *val]
    assert len(set(texts)) == len(texts)  # no exact duplicate survives (max_epochs=1: no repeats either)
    assert not any(EVAL in t for t in texts)
    assert report["shards"]["train_shards"] == -(-len(train) // 40)
    summary = (out / "summary.md").read_text()
    assert "## Duplicates" in summary and "bad_json 1" in summary
    assert json.loads((out / "report.json").read_text())["shards"] == report["shards"]


def test_a_rerun_resumes_finished_stages_and_shards(tmp_path, monkeypatch):
    cfg = _corpus(tmp_path)
    out = str(tmp_path / "out")
    real_write = records.write_shard
    calls = []

    def interrupted(path, recs):  # the run dies after writing its second shard
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(path)
        real_write(path, recs)

    monkeypatch.setattr(records, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.run(cfg, out)
    monkeypatch.setattr(records, "write_shard", real_write)
    report = prepare.run(cfg, out)
    assert all(s["resumed"] for s in report["stages"])  # no stage is redone
    total = report["shards"]["train_shards"] + report["shards"]["val_shards"]
    assert report["shards"]["skipped"] == 2 and report["shards"]["written"] == total - 2

    cfg.data_prep.dedup.threshold = 0.7  # a changed setting redoes its stage and everything after it
    report = prepare.run(cfg, out)
    resumed = [s["stage"] for s in report["stages"] if s["resumed"]]
    assert resumed == ["read", "normalize", "filter", "exact_dedup"] and report["shards"]["skipped"] == 0


def test_config_errors_name_the_key(tmp_path):
    cfg = _corpus(tmp_path)
    cfg.data_prep.sources = ({**cfg.data_prep.sources[0], "wieght": 2.0},)
    with pytest.raises(ConfigError, match=r"unknown key config.data_prep.sources\[0\].wieght"):
        prepare.validate_data_prep(cfg)
    cfg = _corpus(tmp_path)
    cfg.data_prep.sources = (cfg.data_prep.sources[1],)  # raw only: nothing to train the classifier against
    with pytest.raises(ConfigError, match="role 'curated'"):
        prepare.validate_data_prep(cfg)
    cfg.data_prep.dedup.update(bands=20, rows=10)
    cfg.data_prep.quality.enabled = False
    with pytest.raises(ConfigError, match="dedup.bands \\* dedup.rows"):
        prepare.validate_data_prep(cfg)


def test_prepare_command_writes_the_report(tmp_path):
    path = _write_bad_jsonl(tmp_path / "bad.jsonl")
    config = tmp_path / "cfg.py"
    config.write_text(
        "from gptx import config\n\n\ndef get_config():\n    c = config.default()\n"
        f"    c.data_prep.sources = (dict(name='bad', path={str(path)!r}, filters=False),)\n"
        "    c.data_prep.dedup.fuzzy = False\n    return c\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user runs it
    out = subprocess.run(
        [sys.executable, "-m", "gptx.main", "prepare", f"--config={config}", f"--workdir={tmp_path / 'out'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "prepared 6 training and 1 validation documents" in out.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    read = report["stages"][0]["details"]["sources"]["bad"]
    assert read["bad"] == {"bad_json": 1, "non_utf8_repaired": 1, "empty": 1, "missing_field": 1}
    assert read["documents"] == 7


def test_demo_prepare_stage_puts_the_stage_report_into_the_demo_report(tmp_path):
    from conftest import load_config

    from gptx import demo

    cfg = load_config("demo")
    cfg.data_prep.dedup.num_perm = 32  # a smaller sketch keeps this quick; the stage is the same
    demo.run(cfg, str(tmp_path), ["prepare"])
    report = (tmp_path / "report.md").read_text()
    assert "## 0. Data preparation (GPT-3 pipeline)" in report and "| fuzzy_dedup |" in report
    assert "**Exact duplicates**" in report
    corpus = sources.read_documents(str(tmp_path / "prepared"))
    assert len(corpus.train) > 6000 and len(corpus.val) > 0


def test_mixing_follows_the_weights_not_the_sizes():
    # GPT-3 Table 2.2: a small source with a large weight is repeated, a large one with a small weight subsampled.
    small = [{"id": f"s{i}", "source": "small", "text": "x" * 100} for i in range(10)]  # 1,000 bytes
    large = [{"id": f"l{i}", "source": "large", "text": "y" * 100} for i in range(100)]  # 10,000 bytes
    mixed, rows = mix.mix({"small": small, "large": large}, {"small": 3.0, "large": 1.0}, 0, seed=0)
    got = {r["source"]: r["bytes_out"] for r in rows}
    assert got == {"small": 8_300, "large": 2_800}  # 11,000 bytes split 3:1, rounded up to whole documents
    assert {r["source"]: round(r["epochs"], 2) for r in rows} == {"small": 8.3, "large": 0.28}
    assert len(mixed) == 111 and [r["source"] for r in mixed[:20]].count("small") > 5  # shuffled together
    capped, rows = mix.mix({"small": small, "large": large}, {"small": 3.0, "large": 1.0}, 0, 0, max_epochs=3.0)
    assert {r["source"]: r["epochs"] for r in rows} == {"small": 3.0, "large": 0.28}
    assert mix.mix({"small": small, "large": large}, {"small": 3.0, "large": 1.0}, 0, seed=0)[0] == mixed

    train, val = mix.hold_out(large, 0.1, seed=0)
    assert len(val) == 10 and not {r["id"] for r in val} & {r["id"] for r in train}


def test_a_record_keeps_its_own_id_and_others_are_named_by_file_and_line(tmp_path):
    rows = [{"id": "doc-a", "text": "alpha text"}, {"text": "no id here"}, {"id": 7, "text": "numbered"}]
    rows.append({"id": "", "text": "empty id"})
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs, _ = readers.read_source(readers.Source("s", str(tmp_path / "a.jsonl")))
    assert [r["id"] for r in recs] == ["doc-a", "a.jsonl:2", "7", "a.jsonl:4"]
    with open(tmp_path / "b.csv", "w", newline="") as f:
        csv.writer(f).writerows([["key", "text"], ["k1", "first row"], ["k2", "second row"]])
    recs, _ = readers.read_source(readers.Source("s", str(tmp_path / "b.csv"), id_field="key"))
    assert [r["id"] for r in recs] == ["k1", "k2"]
    records.write_shard(str(tmp_path / "c.array_record"), [{"id": "r0", "text": "x y"}, {"text": "z"}])
    recs, _ = readers.read_source(readers.Source("s", str(tmp_path / "c.array_record")))
    assert [r["id"] for r in recs] == ["r0", "c.array_record#1"]
    recs, _ = readers.read_source(readers.Source("s", str(tmp_path / "a.jsonl"), id_field=""))
    assert recs[0]["id"] == "a.jsonl:1"  # id_field="" ignores the records' ids


def test_reading_streams_file_by_file_up_to_the_limit(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": f"{name}{i}"}) + "\n" for i in range(3)))
    src = readers.Source("s", str(tmp_path / "*.jsonl"), limit=4)
    stats = readers.ReadStats()
    docs = readers.iter_source(src, stats)
    assert next(docs)["text"] == "a0" and stats.documents == 1  # nothing is read ahead
    assert [r["text"] for r in docs] == ["a1", "a2", "b0"] and stats.documents == 4


def test_stage_outputs_are_saved_in_parts_and_resumed_from_them(tmp_path, monkeypatch):
    cfg = _corpus(tmp_path)
    out = tmp_path / "out"
    monkeypatch.setattr(prepare, "STAGE_PART_DOCS", 100)
    first = prepare.run(cfg, str(out))
    parts = sorted(p.name for p in (out / "stages").glob("00_read-part-*.jsonl.gz"))
    assert parts == ["00_read-part-00000.jsonl.gz", "00_read-part-00001.jsonl.gz", "00_read-part-00002.jsonl.gz"]
    (out / "stages" / "04_fuzzy_dedup-part-00001.jsonl.gz").unlink()  # a lost part redoes its stage and the rest
    again = prepare.run(cfg, str(out))
    assert [s["resumed"] for s in again["stages"]] == [True] * 4 + [False] * 4
    assert again["shards"] == {**first["shards"], "written": 0, "skipped": first["shards"]["written"]}


def _random_corpus(tmp_path, docs: int):
    """A curated and a raw source of `docs` distinct 300-word documents each; (config, bytes of text)."""
    rng = np.random.default_rng(0)
    vocab = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9))) for _ in range(5000)]
    size = 0
    for name in ("curated", "raw"):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for _ in range(docs):
                text = " ".join(vocab[i] for i in rng.integers(0, len(vocab), 300)) + "."
                size += len(text)
                f.write(json.dumps({"text": text}) + "\n")
    cfg = config_lib.default()
    cfg.data_prep.sources = tuple(
        dict(name=name, path=str(tmp_path / f"{name}.jsonl"), role=name, weight=1.0) for name in ("curated", "raw")
    )
    cfg.data_prep.update(progress=False)
    cfg.data_prep.quality.update(hash_bits=14, max_train_bytes=500_000)  # the classifier's sample stays fixed
    return cfg, size


def peak_growth(run, tmp_path, sizes=(1000, 3000)) -> float:
    """Growth of `run`'s peak traced memory (tracemalloc) per byte of input text between two corpus sizes (both
    past the ~1 MB batches of the vectorised stages, whose temporaries are a constant), after a warm-up run (so
    one-off caches and imports do not count)."""
    peaks, texts = [], []
    for k, docs in enumerate((50, *sizes)):
        (tmp_path / f"in{k}").mkdir()
        cfg, size = _random_corpus(tmp_path / f"in{k}", docs)
        tracemalloc.start()
        try:
            run(cfg, str(tmp_path / f"out{k}"))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        texts.append(size)
    return (peaks[2] - peaks[1]) / (texts[2] - texts[1])


def test_the_local_runner_streams_so_its_memory_does_not_grow_with_the_documents(tmp_path):
    # Stages stream each other's saved parts and the shards stream from the last one: what grows with the corpus
    # is per-document state (hashes, band keys, sizes), not the documents (a runner holding them all grows by
    # about 1.2 bytes per byte of text here; this runner about 0.06).
    assert peak_growth(prepare.run, tmp_path) < 0.4


def test_a_stage_interrupted_while_streaming_is_redone_with_the_same_result(tmp_path, monkeypatch):
    cfg = _corpus(tmp_path)
    monkeypatch.setattr(prepare, "STAGE_PART_DOCS", 100)
    clean_run = prepare.run(cfg, str(tmp_path / "clean"))
    real = prepare.STAGE_FNS["fuzzy_dedup"]

    def dies(recs, ctx, details):  # the run dies after the stage has published two parts
        for k, r in enumerate(real(recs, ctx, details)):
            if k == 250:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setitem(prepare.STAGE_FNS, "fuzzy_dedup", dies)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare.run(cfg, str(out))
    assert (out / "stages" / "04_fuzzy_dedup-part-00001.jsonl.gz").exists()
    assert not (out / "stages" / "04_fuzzy_dedup.json").exists() and not list(out.glob("**/*.tmp*"))
    monkeypatch.setitem(prepare.STAGE_FNS, "fuzzy_dedup", real)
    again = prepare.run(cfg, str(out))
    assert [s["resumed"] for s in again["stages"]] == [True] * 4 + [False] * 4

    def strip(report):
        return [{k: v for k, v in s.items() if k not in ("seconds", "resumed")} for s in report["stages"]]

    assert strip(again) == strip(clean_run) and again["shards"] == clean_run["shards"]
    shards = [[Path(f).read_bytes() for f in records.shard_files(str(d), "train")] for d in (out, tmp_path / "clean")]
    assert shards[0] == shards[1]
