"""Readers that turn a corpus (a text file, or a directory of prepared shards) into documents."""

from __future__ import annotations

import bz2
import gzip
import importlib.resources
import lzma
import os
import re
from collections.abc import Sequence

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
    opener = next((fn for suffix, fn in _OPENERS.items() if path.endswith(suffix)), open)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"corpus file {path} not found (config.data.corpus)") from None
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


def read_documents(path: str, separator: str = "blank_line") -> Sequence[str]:
    """Documents of a corpus: a text file split by `separator`, or a directory written by `prepare`
    (a lazy, random-access `gptx.data.records.PreparedCorpus` over its ArrayRecord shards)."""
    from gptx.data import records  # late import: records imports grain

    if os.path.isdir(path):
        return records.PreparedCorpus(path)
    return split_documents(read_text(path), separator)
