"""13-gram decontamination as in GPT-3 (Brown et al. 2020, Appendix C)."""

import json

import grain
import numpy as np
import pytest
from conftest import SHARED_DATA

from gptx.data import decontam, ngrams, sources

LAMBADA = SHARED_DATA / "lambada" / "lambada_test.jsonl"


@pytest.fixture(scope="module")
def clean_docs():
    # Shakespeare paragraphs long enough to keep pieces: training text that shares no 13-gram with the task.
    docs = [d for d in sources.read_documents("bundled:tinyshakespeare") if len(d) > 900]
    return docs[:120]


def _task_file(tmp_path, examples):
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps({"context": c, "completion": " x"}) + "\n" for c in examples))
    return str(path)


def _plant(doc, text, rng):
    """`text` inserted between two words of `doc` at a random place."""
    cut = [m.end() for m in ngrams.WORD_RE.finditer(doc)]
    at = cut[rng.integers(len(cut) // 4, 3 * len(cut) // 4)]
    return doc[:at] + " " + text + " " + doc[at:]


@pytest.mark.skipif(not LAMBADA.exists(), reason=f"LAMBADA not found at {LAMBADA}")
def test_planted_13_grams_from_a_task_file_are_all_caught_and_clean_documents_untouched(clean_docs):
    rng = np.random.default_rng(0)
    with open(LAMBADA) as f:
        tasks = [json.loads(line)["text"] for line in f][:200]
    planted = {}
    docs = list(clean_docs)
    for k, i in enumerate(range(0, len(docs), 3)):
        words = tasks[k].split()
        start = int(rng.integers(0, len(words) - 13))
        span = " ".join(words[start : start + 13])
        # Case and punctuation do not hide a match: GPT-3 ignores them.
        docs[i] = _plant(docs[i], span.upper() if k % 2 else span, rng)
        planted[i] = span
    cfg = decontam.DecontamConfig(task_files=(str(LAMBADA),), ngram=13, mode="split")
    ev = decontam.eval_ngrams(cfg)
    records = [{"id": str(i), "source": "s", "text": d} for i, d in enumerate(docs)]
    hits = decontam.find_hits(docs, ev)
    assert {h.doc for h in hits} == set(planted)  # every planted document, and no clean one

    result = decontam.decontaminate(records, ev, cfg)
    kept = {r["id"]: r["text"] for r in result.records if "#" not in r["id"]}
    assert kept == {str(i): d for i, d in enumerate(docs) if i not in planted}  # clean documents untouched
    pieces = [r for r in result.records if "#" in r["id"]]
    assert pieces and all(len(p["text"]) >= cfg.min_piece for p in pieces)
    for p in pieces:  # what is left of a dirty document contains no evaluation 13-gram
        assert not decontam.find_hits([p["text"]], ev)
    rep = result.report
    assert rep["docs_contaminated"] == len(planted) == rep["docs_split"] + rep["docs_dropped"]
    assert rep["tasks"][0]["docs_hit"] == len(planted) and rep["tasks"][0]["matches"]


def test_split_cuts_the_match_and_a_window_and_drops_too_dirty_documents(tmp_path):
    eval_text = "one two three four five six seven eight nine ten eleven twelve thirteen"
    cfg = decontam.DecontamConfig(task_files=(_task_file(tmp_path, [eval_text]),), window=50, min_piece=40)
    ev = decontam.eval_ngrams(cfg)
    left, right = "a" * 30 + " " + "lorem ipsum " * 10, " dolor sit amet" * 8
    doc = left + eval_text.title() + "!" + right
    out = decontam.decontaminate([{"id": "d", "source": "s", "text": doc}], ev, cfg).records
    start, end = len(left), len(left) + len(eval_text)
    assert [r["text"] for r in out] == [doc[: start - 50].strip(), doc[end + 50 :].strip()]
    # 11 pieces > max_pieces = 10: the document is dropped as too dirty.
    dirty = (("x" * 120 + " ") + eval_text + " ") * 10 + "y" * 120
    res = decontam.decontaminate([{"id": "d", "source": "s", "text": dirty}], ev, cfg)
    assert res.records == [] and res.report["docs_dropped"] == 1
    drop = decontam.decontaminate([{"id": "d", "source": "s", "text": doc}], ev, decontam.DecontamConfig(
        task_files=cfg.task_files, mode="drop"))  # fmt: skip
    assert drop.records == []


def test_ngrams_in_many_training_documents_are_ignored_as_common_phrases(tmp_path):
    phrase = "to be or not to be that is the question whether tis nobler in the mind"
    cfg = decontam.DecontamConfig(task_files=(_task_file(tmp_path, [phrase]),), max_doc_freq=3, mode="drop")
    ev = decontam.eval_ngrams(cfg)
    few = [{"id": str(i), "source": "s", "text": f"doc {i}: {phrase}"} for i in range(3)]
    many = [{"id": str(i), "source": "s", "text": f"doc {i}: {phrase}"} for i in range(4)]
    assert decontam.decontaminate(few, ev, cfg).records == []
    res = decontam.decontaminate(many, ev, cfg)
    assert res.records == many and res.report["frequent_ngrams_ignored"] > 0


def test_short_example_task_files_use_a_shorter_n_and_report_what_cannot_be_checked(tmp_path):
    examples = ["Q: What is 12 plus 30? A: 42"] * 19 + ["too short"]
    cfg = decontam.DecontamConfig(task_files=(_task_file(tmp_path, examples),), ngram=13, min_ngram=8)
    ev = decontam.eval_ngrams(cfg)
    assert ev.tasks[0]["n"] == 8 and ev.tasks[0]["too_short"] == 1  # 8 words + " x" completion = 9
    hits = decontam.find_hits(["The quiz asked q: what is 12 plus 30? a: 42 x, they said."], ev)
    assert [h.word for h in hits] == [3, 4]  # the 9-word example holds two 8-grams, from "q" and from "what"


def test_decontaminate_runs_as_a_grain_flat_map(tmp_path):
    eval_text = "one two three four five six seven eight nine ten eleven twelve thirteen"
    cfg = decontam.DecontamConfig(task_files=(_task_file(tmp_path, [eval_text]),), window=10, min_piece=20)
    ev = decontam.eval_ngrams(cfg)
    records = [
        {"id": "clean", "source": "s", "text": "nothing to see here at all, move along please"},
        {"id": "dirty", "source": "s", "text": "x" * 40 + " " + eval_text + " " + "y" * 40},
    ]
    ds = grain.MapDataset.source(records).to_iter_dataset()
    out = list(grain.experimental.FlatMapIterDataset(ds, decontam.Decontaminate(ev, cfg)))
    assert [r["id"] for r in out] == ["clean", "dirty#piece0", "dirty#piece1"]
