"""Decontamination: remove evaluation text from training documents, as GPT-3 did (Brown et al. 2020, App. C).

Every word N-gram (N = 13, words ignoring punctuation, whitespace and case: gptx.data.ngrams) of every example
of the evaluation task files is collected. A training document that contains one is either dropped
(`mode="drop"`) or, as in GPT-3, split: the colliding N-gram and `window` characters on each side are cut out,
pieces shorter than `min_piece` characters are discarded, and a document cut into more than `max_pieces`
pieces is dropped as too dirty. N-grams that occur in more than `max_doc_freq` training documents are ignored:
they are common phrases or boilerplate rather than leaked test items (0 disables this).

For task files of short examples, `min_ngram < ngram` lowers N for that file to the 5th-percentile example
length in words (but not below `min_ngram`), so that most of its examples have at least one N-gram; examples
shorter than their file's N cannot be checked and are counted as such in the report.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence

import grain
import numpy as np

from gptx import fs
from gptx.data import ngrams, stage_io
from gptx.data.readers import _open_bytes, file_format, resolve_path


@dataclasses.dataclass(frozen=True)
class DecontamConfig:
    """config.data_prep.decontam."""

    task_files: tuple[str, ...] = ()
    ngram: int = 13
    min_ngram: int = 13
    mode: str = "split"  # split | drop
    window: int = 200
    min_piece: int = 200
    max_pieces: int = 10
    max_doc_freq: int = 10

    @classmethod
    def from_config(cls, c) -> DecontamConfig:
        d = {f.name: c[f.name] for f in dataclasses.fields(cls)}
        d["task_files"] = tuple(d["task_files"])
        return cls(**d)


def task_examples(path: str) -> list[str]:
    """The examples of an evaluation file as texts: all string fields of a JSONL record, all columns of a
    TSV/CSV row (header skipped), or each non-empty line of a text file. Unreadable lines are skipped."""
    fmt = file_format(path)
    out: list[str] = []
    with _open_bytes(path) as f:
        lines = (raw.decode("utf-8", "replace") for raw in f)
        if fmt == "jsonl":
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    out.append(" ".join(v for v in rec.values() if isinstance(v, str)))
        elif fmt in ("tsv", "csv"):
            rows = csv.reader(lines, delimiter="\t" if fmt == "tsv" else ",")
            next(rows, None)
            out.extend(" ".join(row) for row in rows if row)
        else:
            out.extend(line.strip() for line in lines if line.strip())
    return [t for t in out if t.strip()]


def _task_name(path: str) -> str:
    """`dir/stem` of a task file: gsm8k/test, gpt3_tasks/two_digit_addition."""
    parent, base = os.path.split(os.path.normpath(path))
    return f"{os.path.basename(parent)}/{base.split('.')[0]}" if parent else base.split(".")[0]


@dataclasses.dataclass
class EvalNgrams:
    """The N-grams of the evaluation files: for each N, sorted hashes [K] and the task index of each [K]."""

    by_n: dict[int, tuple[np.ndarray, np.ndarray]]
    tasks: list[dict]


def task_ngram_size(lengths: np.ndarray, cfg: DecontamConfig) -> int:
    """N for one task file: `ngram`, or the 5th-percentile example length clipped to [min_ngram, ngram]."""
    if cfg.min_ngram >= cfg.ngram or not len(lengths):
        return cfg.ngram
    return int(np.clip(np.percentile(lengths, 5), cfg.min_ngram, cfg.ngram))


def eval_ngrams(cfg: DecontamConfig) -> EvalNgrams:
    """Reads every task file of the config and collects its N-grams."""
    per_n: dict[int, list[tuple[np.ndarray, int]]] = collections.defaultdict(list)
    tasks = []
    for t, path in enumerate(cfg.task_files):
        full = resolve_path(path)
        if not fs.exists(full):
            raise FileNotFoundError(f"evaluation task file {path} not found (config.data_prep.decontam.task_files)")
        examples = task_examples(full)
        w = ngrams.words(examples)
        n = task_ngram_size(w.counts, cfg)
        grams = ngrams.ngrams(w, n, short="drop")
        per_n[n].append((grams.hashes, t))
        tasks.append(
            {
                "task": _task_name(path),
                "path": path,
                "examples": len(examples),
                "n": n,
                "ngrams": int(len(np.unique(grams.hashes))),
                "too_short": int((w.counts < n).sum()),
            }
        )
    by_n = {}
    for n, parts in per_n.items():
        h = np.concatenate([p[0] for p in parts])
        task = np.concatenate([np.full(len(p[0]), p[1], np.int32) for p in parts])
        h, first = np.unique(h, return_index=True)
        by_n[n] = (h, task[first])
    return EvalNgrams(by_n, tasks)


@dataclasses.dataclass
class Hit:
    """An evaluation N-gram found in training document `doc`, at word `word` (within the document)."""

    doc: int
    word: int
    n: int
    task: int
    ngram: int  # its hash


def find_hits(texts: Sequence[str], ev: EvalNgrams) -> list[Hit]:
    """Every occurrence of an evaluation N-gram in the texts."""
    hits: list[Hit] = []
    lo = 0
    for batch in ngrams.batches(texts):  # ~1 MB of text at a time
        w = ngrams.words(batch)
        for n, (table, task) in ev.by_n.items():
            grams = ngrams.ngrams(w, n, short="drop")
            at = np.minimum(np.searchsorted(table, grams.hashes), max(len(table) - 1, 0))
            found = np.flatnonzero(table[at] == grams.hashes) if len(table) else np.zeros(0, np.int64)
            docs = np.searchsorted(grams.offsets, found, side="right") - 1
            starts = grams.starts[found] - w.offsets[docs]
            for i, d, s in zip(found, docs, starts, strict=True):
                hits.append(Hit(int(d) + lo, int(s), n, int(task[at[i]]), int(grams.hashes[i])))
        lo += len(batch)
    return hits


def cut(text: str, spans: list[tuple[int, int]], cfg: DecontamConfig) -> list[str] | None:
    """The pieces of `text` left after removing each (start, end) character span plus `window` characters on
    both sides; pieces shorter than `min_piece` are discarded. None when more than `max_pieces` pieces result
    (the document is too dirty to keep)."""
    cuts = sorted((max(0, s - cfg.window), min(len(text), e + cfg.window)) for s, e in spans)
    pieces, pos = [], 0
    for s, e in cuts:
        if s > pos:
            pieces.append(text[pos:s])
        pos = max(pos, e)
    if pos < len(text):
        pieces.append(text[pos:])
    if len(pieces) > cfg.max_pieces:
        return None
    return [p.strip() for p in pieces if len(p.strip()) >= cfg.min_piece]


def char_spans(text: str, hits: list[Hit]) -> list[tuple[int, int]]:
    """Character span of each hit's N words in `text` (the str twin of the byte-level word split)."""
    words = [(m.start(), m.end()) for m in ngrams.WORD_RE.finditer(text)]
    return [(words[h.word][0], words[h.word + h.n - 1][1]) for h in hits]


@dataclasses.dataclass
class DecontamResult:
    records: list[dict]
    report: dict


def frequent_ngrams(docs_per_ngram: dict[int, int], max_doc_freq: int) -> set[int]:
    """The N-grams found in more than `max_doc_freq` training documents (none when it is 0)."""
    return {g for g, n in docs_per_ngram.items() if max_doc_freq and n > max_doc_freq}


def clean_document(r: dict, doc_hits: list[Hit], cfg: DecontamConfig) -> tuple[list[dict], list[tuple[int, str]]]:
    """One contaminated record {"id", "source", "text"} without its evaluation N-grams: ([] when dropped, or
    the pieces "ID#pieceK" of `split` mode), and each hit's (task, matched text)."""
    spans = char_spans(r["text"], doc_hits)
    matches = [(h.task, r["text"][s:e]) for h, (s, e) in zip(doc_hits, spans, strict=True)]
    pieces = None if cfg.mode == "drop" else cut(r["text"], spans, cfg)
    return [{**r, "id": f"{r['id']}#piece{k}", "text": p} for k, p in enumerate(pieces or [])], matches


@dataclasses.dataclass
class Tally:
    """What decontamination found, added document by document (in any order, `key` restores it) and mergeable,
    so a distributed run reports the same as a local one."""

    n_tasks: int
    max_examples: int = 10
    docs_contaminated: int = 0
    docs_dropped: int = 0
    docs_split: int = 0
    pieces_kept: int = 0
    docs_hit: list[int] = dataclasses.field(default_factory=list)
    ngrams_matched: list[int] = dataclasses.field(default_factory=list)
    matches: list[list[tuple]] = dataclasses.field(default_factory=list)  # per task: (key, k, match dict)

    def __post_init__(self):
        self.docs_hit = self.docs_hit or [0] * self.n_tasks
        self.ngrams_matched = self.ngrams_matched or [0] * self.n_tasks
        self.matches = self.matches or [[] for _ in range(self.n_tasks)]

    def add(self, key, r: dict, matches: list[tuple[int, str]], pieces: list[dict]) -> None:
        """One contaminated document (`key` orders documents), its matches and the pieces kept of it."""
        self.docs_contaminated += 1
        self.docs_dropped += not pieces
        self.docs_split += bool(pieces)
        self.pieces_kept += len(pieces)
        for t in {t for t, _ in matches}:
            self.docs_hit[t] += 1
        for k, (t, text) in enumerate(matches):
            self.ngrams_matched[t] += 1
            self.matches[t].append((key, k, {"id": r["id"], "source": r["source"], "match": text}))
        self._trim()

    def merge(self, other: Tally) -> Tally:
        for f in ("docs_contaminated", "docs_dropped", "docs_split", "pieces_kept"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        for t in range(self.n_tasks):
            self.docs_hit[t] += other.docs_hit[t]
            self.ngrams_matched[t] += other.ngrams_matched[t]
            self.matches[t].extend(other.matches[t])
        self._trim()
        return self

    def _trim(self) -> None:
        self.matches = [sorted(m, key=lambda x: (x[0], x[1]))[: self.max_examples] for m in self.matches]

    def report(self, ev: EvalNgrams, cfg: DecontamConfig, docs_in: int, frequent: int) -> dict:
        per_task = [
            {"docs_hit": self.docs_hit[t], "ngrams_matched": self.ngrams_matched[t], "matches": [m[2] for m in ms]}
            for t, ms in enumerate(self.matches)
        ]
        return {
            "mode": cfg.mode,
            "docs_in": docs_in,
            "docs_contaminated": self.docs_contaminated,
            "docs_dropped": self.docs_dropped,
            "docs_split": self.docs_split,
            "pieces_kept": self.pieces_kept,
            "frequent_ngrams_ignored": frequent,
            "tasks": [{**t, **p} for t, p in zip(ev.tasks, per_task, strict=True)],
        }


def decontaminate(records: list[dict], ev: EvalNgrams, cfg: DecontamConfig, max_examples: int = 10) -> DecontamResult:
    """Drops or splits the records {"id", "source", "text"} that contain evaluation N-grams; a report of what
    matched (per task: documents hit, the N-grams that matched) comes with the result."""
    report: dict = {}
    out = list(decontaminate_stream(records, ev, cfg, report, max_examples))
    return DecontamResult(out, report)


def decontaminate_stream(
    records: Iterable[dict], ev: EvalNgrams, cfg: DecontamConfig, report: dict, max_examples: int = 10
) -> Iterator[dict]:
    """`decontaminate` over records that can be iterated twice (a pass to find the hits, ~1 MB at a time, and one
    that cleans): yields the kept records and pieces, then fills `report`. Only the hits are held."""
    if cfg.mode not in ("split", "drop"):
        raise ValueError(f"decontam mode must be split or drop, got {cfg.mode!r}")
    hits: list[Hit] = []
    docs_in = 0
    for run, _ in stage_io.chunks(records, lambda r: True):
        for h in find_hits([r["text"] for r in run], ev):
            h.doc += docs_in
            hits.append(h)
        docs_in += len(run)
    docs_per_ngram: dict[int, set[int]] = collections.defaultdict(set)
    for h in hits:
        docs_per_ngram[h.ngram].add(h.doc)
    frequent = frequent_ngrams({g: len(ds) for g, ds in docs_per_ngram.items()}, cfg.max_doc_freq)
    by_doc: dict[int, list[Hit]] = collections.defaultdict(list)
    for h in hits:
        if h.ngram not in frequent:
            by_doc[h.doc].append(h)
    del hits, docs_per_ngram
    tally = Tally(len(ev.tasks), max_examples)
    for i, r in enumerate(records):
        if i not in by_doc:
            yield r
            continue
        pieces, matches = clean_document(r, by_doc[i], cfg)
        tally.add(i, r, matches, pieces)
        yield from pieces
    report.update(tally.report(ev, cfg, docs_in, len(frequent)))


class Decontaminate(grain.experimental.FlatMapTransform):
    """`decontaminate` of one record as a grain flat-map (0, 1 or several pieces out). Per record, so the
    `max_doc_freq` rule, which needs the whole corpus, does not apply here."""

    def __init__(self, ev: EvalNgrams, cfg: DecontamConfig):
        self.ev = ev
        self.cfg = dataclasses.replace(cfg, max_doc_freq=0)
        self.max_fan_out = cfg.max_pieces

    def flat_map(self, record: dict):
        return decontaminate([record], self.ev, self.cfg).records
