"""Records of a task's data file: JSON lines, a JSON list, CSV/TSV with a header row, or plain text (one record
{"text": line} per non-empty line), each plain or compressed (.gz, .xz, .bz2).

Every record keeps the line of the file it started on, so a malformed record is reported as FILE:LINE. A record
is malformed when it does not parse (bad JSON, a CSV row with another number of cells than the header) or lacks
one of the required fields; it is counted and reported, never silently dropped. CSV/TSV columns holding only
numbers are read as numbers, as Hugging Face `datasets` reads them. CSV/TSV quote characters quote as in
Python's csv module (a quoted cell may hold the delimiter, newlines and doubled quotes); `quote=False` reads
them as text, as GLUE's TSV files need ('"The Osbournes" is the name of a reality show').
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import json
import lzma
import os
from collections.abc import Iterator, Sequence
from typing import IO, Any

FORMATS = ("jsonl", "json", "csv", "tsv", "text")
_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


@dataclasses.dataclass
class Records:
    path: str
    docs: list[dict[str, Any]]
    lines: list[int]  # the file line each doc starts on
    malformed_lines: list[int] = dataclasses.field(default_factory=list)


def format_of(path: str) -> str:
    """The format a file's name implies: data.csv.gz -> csv, data.txt -> text, anything else -> jsonl."""
    stem, ext = os.path.splitext(path)
    if ext in _OPENERS:
        stem, ext = os.path.splitext(stem)
    return {".csv": "csv", ".tsv": "tsv", ".json": "json", ".txt": "text"}.get(ext, "jsonl")


def open_text(path: str) -> IO[str]:
    opener = _OPENERS.get(os.path.splitext(path)[1], open)
    return opener(path, "rt", encoding="utf-8", newline="")


def read(path: str, fmt: str = "", fields: Sequence[str] = (), quote: bool = True) -> Records:
    """The records of `path` in format `fmt` ("" = from its name) that have every one of `fields`; `quote`:
    whether CSV/TSV quote characters quote (else they are text)."""
    fmt = fmt or format_of(path)
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"task file {path} not found (set config.eval.data_dir)")
    out = Records(path, [], [])
    with open_text(path) as f:
        parse = _table(_DELIMITERS[fmt], quote) if fmt in _DELIMITERS else _PARSERS[fmt]
        for line, rec in parse(f):
            if isinstance(rec, dict) and all(rec.get(k) is not None for k in fields):
                out.docs.append(rec)
                out.lines.append(line)
            else:
                out.malformed_lines.append(line)
    if fmt in ("csv", "tsv"):
        _infer_numbers(out.docs)
    return out


def _infer_numbers(docs: list[dict[str, Any]]) -> None:
    """Columns whose every cell is an integer (or a number) become ints (floats), as Hugging Face `datasets`
    (pandas) reads a CSV, so a template like "{{answer_right_ending - 1}}" means the same in both."""
    for column in list(docs[0]) if docs else []:
        cells = [d[column] for d in docs]
        for kind in (int, float):
            try:
                values = [kind(c) for c in cells]
            except ValueError:
                continue
            for d, v in zip(docs, values, strict=True):
                d[column] = v
            break


def _jsonl(f: IO[str]) -> Iterator[tuple[int, Any]]:
    for line_no, line in enumerate(f, 1):
        if line.strip():
            try:
                yield line_no, json.loads(line)
            except ValueError:
                yield line_no, None


def _json(f: IO[str]) -> Iterator[tuple[int, Any]]:
    """A JSON list of objects (or {"data": [...]}); a record's "line" is its 1-based index in the list."""
    data = json.load(f)
    if isinstance(data, dict):
        data = data.get("data", data.get("docs"))
    if not isinstance(data, list):
        raise ValueError(f"{f.name}: a JSON task file holds a list of records (or {{'data': [...]}})")
    yield from enumerate(data, 1)


def _table(delimiter: str, quote: bool = True):
    def parse(f: IO[str]) -> Iterator[tuple[int, Any]]:
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            return
        while True:
            line = reader.line_num + 1  # the line this row starts on (a quoted cell may span lines)
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                yield line, None
                continue
            if not any(cell.strip() for cell in row):
                continue
            yield line, dict(zip(header, row, strict=True)) if len(row) == len(header) else None

    return parse


def _text(f: IO[str]) -> Iterator[tuple[int, Any]]:
    for line_no, line in enumerate(f, 1):
        if line.strip():
            yield line_no, {"text": line.rstrip("\r\n")}


_PARSERS = {"jsonl": _jsonl, "json": _json, "text": _text}
_DELIMITERS = {"csv": ",", "tsv": "\t"}
