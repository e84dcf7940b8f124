"""Readers of raw sources for `prepare`: text, JSONL, TSV/CSV (optionally gz/xz/bz2-compressed) and ArrayRecord.

A source is one or more files with a name and the field that holds its text. Reading never stops on bad input:
a line that is not JSON, a row with the wrong number of columns, a record without its text field, an empty
document, or bytes that are not UTF-8 are counted in a `ReadStats` with file and line, and the record is skipped
(non-UTF-8 bytes are repaired with U+FFFD instead when `on_bad_utf8="repair"`). A compressed file that breaks
mid-stream keeps the documents before the break and counts the rest as unreadable from the line where it broke
(`_File`); a source that yields nothing is a warning in the `prepare` log and summary.
"""

from __future__ import annotations

import bisect
import collections
import csv
import dataclasses
import json
import lzma
import os
import zlib
from collections.abc import Iterator

from gptx import fs
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
    `limit` (read at most this many documents; 0 = all), whether the heuristic `filters` apply, and `id_field`
    (JSON key or TSV/CSV column of the document's own id, kept as its id; "" or a record without it: file:line)."""

    name: str
    path: str
    format: str = "auto"
    text_field: str = "text"
    separator: str = "blank_line"
    weight: float = 1.0
    role: str = "none"
    limit: int = 0
    filters: bool = True
    id_field: str = "id"

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
    warnings: list[str] = dataclasses.field(default_factory=list)  # damaged files, for the log and summary.md

    def flag(self, kind: str, where: str) -> None:
        self.bad[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {kind.replace('_', ' ')}")

    def to_dict(self) -> dict:
        return {
            "documents": self.documents,
            "bytes": self.bytes,
            "bad": dict(self.bad),
            "examples": self.examples,
            "warnings": self.warnings,
        }


def resolve_path(path: str) -> str:
    """`bundled:NAME`, an existing path, or a path relative to the repository root (as config.finetune.data_dir)."""
    if path.startswith("bundled:"):
        return resolve(path)
    if fs.is_remote(path) or os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(REPO, path)


def source_files(src: Source) -> list[str]:
    """The files of a source, in order; a missing file is a FileNotFoundError naming the source."""
    files: list[str] = []
    for part in (p.strip() for p in src.path.split(",") if p.strip()):
        path = resolve_path(part)
        if fs.isdir(path):
            found = fs.glob(fs.join(path, "*.array_record"))
        elif fs.has_magic(path):
            found = fs.glob(path)
        else:
            found = [path] if fs.exists(path) else []
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
    if fs.is_remote(path):  # gzip/lzma/bz2 read from any file object, gcsfs's too
        raw = fs.open_file(path, "rb")
        return raw if opener is open else opener(raw)
    return opener(path, "rb")


# What decompressors raise on damaged input: gzip/bz2 OSError (BadGzipFile, "Invalid data stream"), zlib.error,
# lzma.LZMAError, EOFError for a stream cut short.
STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
Item = tuple[str, str, "str | None"]  # (where: file and line, text, the record's own id or None)
DAMAGE = ("non_utf8_repaired", "non_utf8_skipped", "bad_json", "missing_field", "bad_row")  # a line looks damaged


class _File:
    """One file being read: its lines, and what could not be read of it, counted in `stats`.

    A compressed file can break mid-stream (a cut download, damaged bytes). The decompressor raises at the
    break, but what it produced just before may already be garbage: xz checks a block at its end, bz2 a whole
    block of up to 900 kB of text, gzip its CRC only at the end of the file. So the documents of a compressed
    file are held back from its first line that looks damaged (`DAMAGE`), and those of a bz2 file always: if
    the file ends cleanly they are kept; if it breaks on damaged bytes, the documents from the first
    damaged-looking line, or (bz2) from the start of the block that failed its check, are dropped and counted
    as `lines_after_break`, and those before are kept. A file cut short (EOFError) decoded correctly up to the
    cut: all its whole lines are kept. A gzip CRC failure with no damaged-looking line cannot be located: what
    was read is kept, with a warning. Every break is counted as `unreadable_file` at the line it cut from.
    """

    def __init__(self, path: str, stats: ReadStats):
        self.path, self.stats = path, stats
        self.compressed = path.endswith(tuple(_OPENERS))
        self.block = _bz2_block_bytes(path)  # 0 unless bz2
        self.starts: list[int] = [0]  # bz2: uncompressed offset at which each line starts (and the end)
        self.suspect = 0  # first damaged-looking line of a compressed file; 0: none
        self.held_flags: list[tuple[int, str, str]] = []  # (line, kind, where)
        self.held: list[tuple[int, str, str, str | None]] = []  # (line, where, text, own id)
        self.error = ""  # what broke the stream
        self.truncated = False  # it ended early (EOFError): what came before it decoded correctly
        self.lines_read = 0  # whole lines read

    def flag(self, kind: str, where: str, line: int) -> None:
        if self.compressed and not self.suspect and kind in DAMAGE:
            self.suspect = line
        if self.suspect or self.block:
            self.held_flags.append((line, kind, where))
        else:
            self.stats.flag(kind, where)

    def keep(self, line: int, where: str, text: str, own: str | None = None) -> list[Item]:
        """The records that can be kept now: this one, or none while records are held back."""
        if self.suspect or self.block:
            self.held.append((line, where, text, own))
            return []
        return [(where, text, own)]

    def lines(self, on_bad_utf8: str) -> Iterator[tuple[int, str | None]]:
        """(line number, text) of each whole line; text None for a non-UTF-8 line that is skipped."""
        previous = None
        try:
            with _open_bytes(self.path) as f:
                for line_no, raw in enumerate(f, 1):
                    # One line behind: a line without its newline at a break was cut short, not read whole.
                    if previous is not None:
                        yield self._decode(*previous, on_bad_utf8)
                    previous, self.lines_read = (line_no, raw), line_no
                    if self.block:
                        self.starts.append(self.starts[-1] + len(raw))
        except STREAM_ERRORS as e:
            if isinstance(e, FileNotFoundError):
                raise
            if isinstance(e, (PermissionError, IsADirectoryError)):
                raise DataError(f"{self.path}: {e.strerror}") from None
            self.error = " ".join(str(e).split()) or type(e).__name__
            self.truncated = isinstance(e, EOFError)
            if previous is not None and not previous[1].endswith(b"\n"):
                previous, self.lines_read = None, previous[0] - 1
        if previous is not None:
            yield self._decode(*previous, on_bad_utf8)

    def _decode(self, line_no: int, raw: bytes, on_bad_utf8: str) -> tuple[int, str | None]:
        try:
            return line_no, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            repaired = on_bad_utf8 == "repair"
            kind = "non_utf8_repaired" if repaired else "non_utf8_skipped"
            self.flag(kind, f"{self.path}:{line_no} byte {e.start}", line_no)
            return line_no, raw.decode("utf-8", "replace") if repaired else None

    def checksum_failed(self) -> bool:
        """gzip read to its end, but its CRC or length did not match: damaged somewhere, nothing says where."""
        return "CRC check failed" in self.error or "Incorrect length" in self.error

    def cut(self) -> int:
        """The first line whose documents are not kept (past the end when all are)."""
        end = self.lines_read + 1
        if not self.error or self.truncated or (self.checksum_failed() and not self.suspect):
            return end
        cut = self.suspect or end
        if self.block:  # the block that failed began at most `block` bytes before the break
            cut = min(cut, bisect.bisect_left(self.starts, self.starts[self.lines_read] - self.block) + 1)
        return cut

    def finish(self) -> tuple[list[Item], str]:
        """(records held back that are kept, a warning or "") once the file has been read."""
        cut, end = self.cut(), self.lines_read + 1
        for line, kind, where in self.held_flags:
            if line < cut:
                self.stats.flag(kind, where)
        kept = [(where, text, own) for line, where, text, own in self.held if line < cut]
        if not self.error:
            return kept, ""
        self.stats.flag("unreadable_file", f"{self.path}:{min(cut, end)}: {self.error}")
        if cut < end:
            self.stats.bad["lines_after_break"] += end - cut
            return kept, (
                f"{self.path} is damaged ({self.error}): its documents from line {cut} on were dropped "
                f"({len(self.held) - len(kept)} documents in {end - cut} lines), those before kept"
            )
        if self.checksum_failed():
            return kept, (
                f"{self.path} is damaged ({self.error} at its end): the damage could not be located, so the "
                "documents read from it were kept; check them, or fetch the file again"
            )
        return kept, f"{self.path} is damaged ({self.error}): read up to line {end - 1}, the rest is lost"


def _bz2_block_bytes(path: str) -> int:
    """Uncompressed bytes in a block of a bz2 file (header `BZh1`..`BZh9`: 100..900 kB); 0 for other files."""
    if not path.endswith(".bz2"):
        return 0
    with fs.open_file(path, "rb") as f:
        head = f.read(4)
    return 100_000 * int(chr(head[3])) if head[:3] == b"BZh" and head[3:4].isdigit() else 0


def _own_id(value) -> str | None:
    """A record's own id: a non-empty string or an integer (not a bool), as text; otherwise None."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value) or None


def _jsonl(file: _File, field: str, on_bad_utf8: str, id_field: str = "") -> Iterator[Item]:
    path = file.path
    for line_no, line in file.lines(on_bad_utf8):
        if line is None or not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            file.flag("bad_json", f"{path}:{line_no}", line_no)
            continue
        text = rec.get(field) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            file.flag("missing_field", f"{path}:{line_no} (no string {field!r})", line_no)
            continue
        own = _own_id(rec.get(id_field)) if id_field else None
        yield from file.keep(line_no, f"{path}:{line_no}", text, own)


def _table(file: _File, field: str, delimiter: str, on_bad_utf8: str, id_field: str = "") -> Iterator[Item]:
    path = file.path
    numbers: list[int] = []

    def lines():
        for line_no, line in file.lines(on_bad_utf8):
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
    id_col = header.index(id_field) if id_field and id_field in header else None
    for row in reader:
        line_no = numbers[reader.line_num - 1] if reader.line_num <= len(numbers) else reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            file.flag("bad_row", f"{path}:{line_no} ({len(row)} columns, header has {len(header)})", line_no)
            continue
        own = _own_id(row[id_col]) if id_col is not None else None
        yield from file.keep(line_no, f"{path}:{line_no}", row[col], own)


def _text(file: _File, separator: str, on_bad_utf8: str) -> Iterator[Item]:
    lines = [(n, line) for n, line in file.lines(on_bad_utf8) if line is not None]
    cut = file.cut()
    if cut <= file.lines_read:
        # Documents span lines: the document the cut falls in goes with it.
        if separator == "blank_line":
            cut = next((n + 1 for n, line in reversed(lines) if n < cut and not line.strip()), 1)
        file.suspect = cut  # what `finish` counts from
        after = "".join(line for n, line in lines if n >= cut)
        file.held = [(cut, f"{file.path}:{cut}", doc, None) for doc in split_documents(after, separator)]
        lines = [(n, line) for n, line in lines if n < cut]
    for i, doc in enumerate(split_documents("".join(line for _, line in lines), separator)):
        yield f"{file.path}#{i}", doc, None


def _arrayrecord(path: str, field: str, stats: ReadStats, id_field: str = "") -> Iterator[Item]:
    from array_record.python import array_record_module

    reader = array_record_module.ArrayRecordReader(path)
    try:
        n = reader.num_records()
        for lo in range(0, n, 1024):  # batched reads: one call per 1,024 records
            for i, raw in enumerate(reader.read(list(range(lo, min(n, lo + 1024)))), lo):
                text, own = _record_text(raw, field, f"{path}#{i}", stats, id_field)
                if text is not None:
                    yield f"{path}#{i}", text, own
    finally:
        reader.close()


def _record_text(
    raw: bytes, field: str, where: str, stats: ReadStats, id_field: str = ""
) -> tuple[str | None, str | None]:
    """(text, own id) of one ArrayRecord record: raw UTF-8, or the `field` (and `id_field`) of its JSON object."""
    own = None
    try:
        text = raw.decode("utf-8")
        if field:
            rec = json.loads(text)
            text = rec.get(field)
            own = _own_id(rec.get(id_field)) if id_field else None
    except UnicodeDecodeError:
        stats.flag("non_utf8_skipped", where)
        return None, None
    except (ValueError, AttributeError):
        stats.flag("bad_json", where)
        return None, None
    if not isinstance(text, str):
        stats.flag("missing_field", f"{where} (no string {field!r})")
        return None, None
    return text, own


def _items(src: Source, path: str, file: _File, on_bad_utf8: str) -> Iterator[Item]:
    """(where, text, own id) of each document of one file, in file order, before the file is finished."""
    fmt = file_format(path, src.format)
    if fmt == "jsonl":
        return _jsonl(file, src.text_field, on_bad_utf8, src.id_field)
    if fmt in ("tsv", "csv"):
        return _table(file, src.text_field, "\t" if fmt == "tsv" else ",", on_bad_utf8, src.id_field)
    if fmt == "arrayrecord":
        return _arrayrecord(path, src.text_field, file.stats, src.id_field)
    return _text(file, src.separator, on_bad_utf8)


def iter_file(src: Source, path: str, stats: ReadStats, on_bad_utf8: str = "repair") -> Iterator[dict]:
    """The documents of one file of a source as records {"id", "source", "text"}, streamed in file order.

    Empty documents (only whitespace) are counted in `stats` as `empty` and skipped; so is everything else
    reading finds, and a damaged file's warning is added to `stats.warnings` once the file is read. Ids are the
    record's own (`src.id_field`) or name the file and line. The source's `limit` is not applied here.
    """
    file = _File(path, stats)
    for item in _items(src, path, file, on_bad_utf8):
        rec = _record(stats, src, *item)
        if rec is not None:
            yield rec
    held, warning = file.finish()
    if warning:
        stats.warnings.append(warning)
    for item in held:
        rec = _record(stats, src, *item)
        if rec is not None:
            yield rec


def iter_source(src: Source, stats: ReadStats, on_bad_utf8: str = "repair") -> Iterator[dict]:
    """The documents of every file of a source, in order, up to the source's `limit`, streamed."""
    if on_bad_utf8 not in ("repair", "skip"):
        raise ValueError(f"on_bad_utf8 must be 'repair' or 'skip', got {on_bad_utf8!r}")
    n = 0
    for path in source_files(src):
        for rec in iter_file(src, path, stats, on_bad_utf8):
            yield rec
            n += 1
            if src.limit and n >= src.limit:
                return


def read_source(src: Source, on_bad_utf8: str = "repair") -> tuple[list[dict], ReadStats]:
    """All documents of a source as records {"id", "source", "text"}, and what reading found (`iter_source`)."""
    stats = ReadStats()
    return list(iter_source(src, stats, on_bad_utf8)), stats


def _record(stats: ReadStats, src: Source, where: str, text: str, own: str | None) -> dict | None:
    """The record of a document, counted in `stats`; None for an empty one (counted as `empty`)."""
    if not text.strip():
        stats.flag("empty", where)
        return None
    stats.documents += 1
    stats.bytes += len(text.encode("utf-8", "surrogatepass"))
    return {"id": own or os.path.basename(where), "source": src.name, "text": text}
