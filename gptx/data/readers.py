"""Readers of raw sources for `prepare`: text, JSONL, TSV/CSV (optionally gz/xz/bz2-compressed) and ArrayRecord.

A source is one or more files with a name and the field that holds its text. Reading never stops on bad input:
a line that is not JSON, a row with the wrong number of columns, a record without its text field, an empty
document, or bytes that are not UTF-8 are counted in a `ReadStats` with file and line, and the record is skipped
(non-UTF-8 bytes are repaired with U+FFFD instead when `on_bad_utf8="repair"`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import json
import os
from collections.abc import Iterator

from gptx.data.paths import REPO
from gptx.data.sources import _OPENERS, DataError, resolve, split_documents
from gptx.errors import ConfigError

FORMATS = ("auto", "text", "jsonl", "tsv", "csv", "arrayrecord")
ROLES = ("curated", "raw", "none")  # quality classifier: positives (kept as they are), negatives (filtered), neither
MAX_EXAMPLES = 20  # bad-input locations kept per source for the report


@dataclasses.dataclass(frozen=True)
class Source:
    """A named source: `path` (comma-separated files or globs; a directory reads its *.array_record files),
    `text_field` (JSON key, TSV/CSV column or JSON key inside ArrayRecord records; "" = raw text records),
    `separator` (text files: blank_line | line | none), mixing `weight`, quality-classifier `role`,
    `limit` (read at most this many documents; 0 = all) and whether the heuristic `filters` apply."""

    name: str
    path: str
    format: str = "auto"
    text_field: str = "text"
    separator: str = "blank_line"
    weight: float = 1.0
    role: str = "none"
    limit: int = 0
    filters: bool = True

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Source:
        """Builds a Source from a config entry; `where` names the entry in errors (config.data_prep.sources[i])."""

        fields = {f.name: f for f in dataclasses.fields(cls)}
        d = dict(d)
        for key in d:
            if key not in fields:
                raise ConfigError(f"unknown key {where}.{key}; keys: {', '.join(fields)}")
        for key in ("name", "path"):
            if not d.get(key):
                raise ConfigError(f"{where}.{key} is required")
        src = cls(**d)
        if src.format not in FORMATS:
            raise ConfigError(f"{where}.format={src.format!r} is not one of {', '.join(FORMATS)}")
        if src.role not in ROLES:
            raise ConfigError(f"{where}.role={src.role!r} is not one of {', '.join(ROLES)}")
        if src.separator not in ("blank_line", "line", "none"):
            raise ConfigError(f"{where}.separator={src.separator!r} is not one of blank_line, line, none")
        if src.weight < 0 or src.limit < 0:
            raise ConfigError(f"{where}: weight and limit must be >= 0")
        return src


@dataclasses.dataclass
class ReadStats:
    """What reading a source found: documents read, and bad input counted by kind with example locations."""

    documents: int = 0
    bytes: int = 0
    bad: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)

    def flag(self, kind: str, where: str) -> None:
        self.bad[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {kind.replace('_', ' ')}")

    def to_dict(self) -> dict:
        return {"documents": self.documents, "bytes": self.bytes, "bad": dict(self.bad), "examples": self.examples}


def resolve_path(path: str) -> str:
    """`bundled:NAME`, an existing path, or a path relative to the repository root (as config.finetune.data_dir)."""
    if path.startswith("bundled:"):
        return resolve(path)
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(REPO, path)


def source_files(src: Source) -> list[str]:
    """The files of a source, in order; a missing file is a FileNotFoundError naming the source."""
    files: list[str] = []
    for part in (p.strip() for p in src.path.split(",") if p.strip()):
        path = resolve_path(part)
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "*.array_record")))
        elif glob.has_magic(path):
            found = sorted(glob.glob(path))
        else:
            found = [path] if os.path.exists(path) else []
        if not found:
            where = f" (resolved to {path})" if path != part else ""
            raise FileNotFoundError(f"source {src.name!r}: no file {part}{where}")
        files.extend(found)
    return files


def file_format(path: str, fmt: str = "auto") -> str:
    """The format of a file from its name, compression suffix removed (unknown extensions read as text)."""
    if fmt != "auto":
        return fmt
    base = path
    for suffix in _OPENERS:
        base = base.removesuffix(suffix)
    ext = os.path.splitext(base)[1].lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".csv": "csv", ".array_record": "arrayrecord"}.get(
        ext, "text"
    )


def _open_bytes(path: str):
    opener = next((fn for suffix, fn in _OPENERS.items() if path.endswith(suffix)), open)
    return opener(path, "rb")


def _decoded_lines(path: str, on_bad_utf8: str, stats: ReadStats) -> Iterator[tuple[int, str | None]]:
    """(line number, text) of each line; text None for a non-UTF-8 line that is skipped."""
    try:
        with _open_bytes(path) as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    yield line_no, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    repaired = on_bad_utf8 == "repair"
                    stats.flag(
                        "non_utf8_repaired" if repaired else "non_utf8_skipped", f"{path}:{line_no} byte {e.start}"
                    )
                    yield line_no, raw.decode("utf-8", "replace") if repaired else None
    except (OSError, EOFError) as e:  # a truncated or corrupt compressed file: keep what was read, report the rest
        if isinstance(e, FileNotFoundError):
            raise
        stats.flag("unreadable_file", f"{path}: {e}")


def _jsonl(path: str, field: str, on_bad_utf8: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    for line_no, line in _decoded_lines(path, on_bad_utf8, stats):
        if line is None or not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            stats.flag("bad_json", f"{path}:{line_no}")
            continue
        text = rec.get(field) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            stats.flag("missing_field", f"{path}:{line_no} (no string {field!r})")
            continue
        yield f"{path}:{line_no}", text


def _table(path: str, field: str, delimiter: str, on_bad_utf8: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    numbers: list[int] = []

    def lines():
        for line_no, line in _decoded_lines(path, on_bad_utf8, stats):
            if line is not None:
                numbers.append(line_no)
                yield line

    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        return
    if field not in header:
        raise DataError(f"{path}: header {header} has no column {field!r} (set the source's text_field)")
    col = header.index(field)
    for row in reader:
        where = f"{path}:{numbers[reader.line_num - 1] if reader.line_num <= len(numbers) else reader.line_num}"
        if not row:
            continue
        if len(row) != len(header):
            stats.flag("bad_row", f"{where} ({len(row)} columns, header has {len(header)})")
            continue
        yield where, row[col]


def _text(path: str, separator: str, on_bad_utf8: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    kept = [line for _, line in _decoded_lines(path, on_bad_utf8, stats) if line is not None]
    for i, doc in enumerate(split_documents("".join(kept), separator)):
        yield f"{path}#{i}", doc


def _arrayrecord(path: str, field: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    from array_record.python import array_record_module

    reader = array_record_module.ArrayRecordReader(path)
    try:
        n = reader.num_records()
        for lo in range(0, n, 1024):  # batched reads: one call per 1,024 records
            for i, raw in enumerate(reader.read(list(range(lo, min(n, lo + 1024)))), lo):
                text = _record_text(raw, field, f"{path}#{i}", stats)
                if text is not None:
                    yield f"{path}#{i}", text
    finally:
        reader.close()


def _record_text(raw: bytes, field: str, where: str, stats: ReadStats) -> str | None:
    """The text of one ArrayRecord record: raw UTF-8, or the `field` of its JSON object."""
    try:
        text = raw.decode("utf-8")
        if field:
            text = json.loads(text).get(field)
    except UnicodeDecodeError:
        stats.flag("non_utf8_skipped", where)
        return None
    except (ValueError, AttributeError):
        stats.flag("bad_json", where)
        return None
    if not isinstance(text, str):
        stats.flag("missing_field", f"{where} (no string {field!r})")
        return None
    return text


def read_source(src: Source, on_bad_utf8: str = "repair") -> tuple[list[dict], ReadStats]:
    """All documents of a source as records {"id", "source", "text"}, and what reading found.

    Empty documents (only whitespace) are counted as `empty` and dropped. Ids name the file and line.
    """
    if on_bad_utf8 not in ("repair", "skip"):
        raise ValueError(f"on_bad_utf8 must be 'repair' or 'skip', got {on_bad_utf8!r}")
    stats = ReadStats()
    records: list[dict] = []
    for path in source_files(src):
        fmt = file_format(path, src.format)
        if fmt == "jsonl":
            items = _jsonl(path, src.text_field, on_bad_utf8, stats)
        elif fmt in ("tsv", "csv"):
            items = _table(path, src.text_field, "\t" if fmt == "tsv" else ",", on_bad_utf8, stats)
        elif fmt == "arrayrecord":
            items = _arrayrecord(path, src.text_field, stats)
        else:
            items = _text(path, src.separator, on_bad_utf8, stats)
        for where, text in items:
            if not text.strip():
                stats.flag("empty", where)
                continue
            records.append({"id": os.path.basename(where), "source": src.name, "text": text})
            stats.documents += 1
            stats.bytes += len(text.encode("utf-8", "surrogatepass"))
            if src.limit and len(records) >= src.limit:
                return records, stats
    return records, stats
