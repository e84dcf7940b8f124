"""Readers that turn a corpus (a text file, or a directory of prepared shards) into documents."""

from __future__ import annotations

import bz2
import gzip
import importlib.resources
import io
import lzma
import re
import zlib
from collections.abc import Sequence

from gptx import fs
from gptx.errors import DataError  # also re-exported: `sources.DataError` predates gptx.errors

BUNDLED = {"tinyshakespeare": "tinyshakespeare.txt"}

_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def resolve(path: str) -> str:
    """File path of a corpus; `bundled:NAME` names a corpus shipped inside the package."""
    if path.startswith("bundled:"):
        name = path.removeprefix("bundled:")
        if name not in BUNDLED:
            raise DataError(f"no bundled corpus {name!r}; bundled: {', '.join(BUNDLED)}")
        return str(importlib.resources.files("gptx") / "assets" / BUNDLED[name])
    return path


def read_text(path: str) -> str:
    """Whole UTF-8 text of a (possibly gz/xz/bz2-compressed) file; errors name the file and byte offset."""
    path = resolve(path)
    opener = next((fn for suffix, fn in _OPENERS.items() if path.endswith(suffix)), None)
    try:
        raw = fs.read_bytes(path)  # local or a URL (gs://...)
        if opener is not None:
            with opener(io.BytesIO(raw), "rb") as f:
                raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"corpus file {path} not found (config.data.corpus)") from None
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:  # a damaged or truncated archive
        why = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{path}: cannot read it ({why}); is it damaged or cut short?") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} (byte {e.start}) is not valid UTF-8: {e.reason}") from None


def split_documents(text: str, separator: str) -> list[str]:
    """Documents of a text: paragraphs (`blank_line`), lines (`line`) or the whole text (`none`)."""
    if separator == "blank_line":
        docs = re.split(r"\n[ \t]*\n", text)
    elif separator == "line":
        docs = text.split("\n")
    elif separator == "none":
        docs = [text]
    else:
        raise ValueError(f"unknown document separator {separator!r}")
    return [d.strip("\n") for d in docs if d.strip()]


class Documents(list):
    """The documents of a text corpus (a plain list of str) that remember where they came from, so that a
    later step (the train/validation split, tokenizer training) can name the file in its errors."""

    def __init__(self, docs=(), *, source: str = "", separator: str = ""):
        super().__init__(docs)
        self.source, self.separator = source, separator


def read_documents(path: str, separator: str = "blank_line") -> Sequence[str]:
    """Documents of a corpus: a text file split by `separator` (`Documents`), or a directory written by
    `prepare` (a lazy, random-access `gptx.data.records.PreparedCorpus` over its ArrayRecord shards).

    A text file without a single document is a DataError before anything trains on it.
    """
    from gptx.data import records  # late import: records imports grain

    if fs.isdir(path):
        return records.PreparedCorpus(path)
    text = read_text(path)
    docs = Documents(split_documents(text, separator), source=resolve(path), separator=separator)
    if not docs:
        what = "the file is empty" if not text else f"its {text.count(chr(10)) + 1} lines hold only whitespace"
        raise DataError(f"0 training documents in {resolve(path)} ({what}; config.data.corpus)")
    return docs
