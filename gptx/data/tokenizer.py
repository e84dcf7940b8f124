"""Tokenizers: load, find in a workdir, train. SentencePiece (gptx's default) or byte-level BPE / any Hugging
Face tokenizer.json (GPT-2's), behind one interface (`gptx.data.tokenizer_base.Tokenizer`).

A workdir keeps its tokenizer under the standard names: `tokenizer.model` (SentencePiece) or `tokenizer.json` +
`tokenizer_config.json` (BPE), or OpenAI's `vocab.json` + `merges.txt`. `config.data.tokenizer` may name any of
these files or a directory holding them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from gptx import fs
from gptx.data import bpe_tokenizer, sp_tokenizer
from gptx.data.bpe_tokenizer import BPETokenizer
from gptx.data.sp_tokenizer import SentencePieceTokenizer
from gptx.data.tokenizer_base import Tokenizer

__all__ = ["KINDS", "BPETokenizer", "SentencePieceTokenizer", "Tokenizer", "find", "load", "train", "train_from_config"]

KINDS = ("sentencepiece", "bpe")
FILES = (sp_tokenizer.FILENAME, bpe_tokenizer.FILENAME)


def find(directory: str) -> str | None:
    """The tokenizer a directory (a workdir, an HF checkpoint) holds: the path `load` takes, or None."""
    for name in FILES:
        if fs.exists(fs.join(directory, name)):
            return fs.join(directory, name)
    if all(fs.exists(fs.join(directory, f)) for f in bpe_tokenizer.OPENAI_FILES):
        return directory
    return None


def load(path: str | os.PathLike) -> Tokenizer:
    """A `.model` (SentencePiece), a `tokenizer.json`, or a directory holding either or vocab.json + merges.txt.

    A missing or malformed file is one line naming it: FileNotFoundError, or DataError for a file that is there
    but is not a tokenizer (or whose tokenizer_config.json is not a JSON object).
    """
    path = os.fspath(path)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"tokenizer {path} not found: train one with `python -m gptx.main tokenizer`, or name a tokenizer.model, "
            "tokenizer.json or a directory with vocab.json + merges.txt in --config.data.tokenizer"
        )
    if fs.isdir(path):
        found = find(path)
        half = any(fs.exists(fs.join(path, f)) for f in bpe_tokenizer.OPENAI_FILES)
        if found is None and not half:  # (with half of OpenAI's pair, BPETokenizer names the missing file)
            raise FileNotFoundError(f"{path} holds no tokenizer.model, tokenizer.json or vocab.json + merges.txt")
        path = found or path
    if fs.isdir(path) or path.endswith(".json") or fs.basename(path) in bpe_tokenizer.OPENAI_FILES:
        return BPETokenizer.load(path)
    return SentencePieceTokenizer.load(path)


def train(
    texts: Iterable[str],
    vocab_size: int,
    kind: str = "sentencepiece",
    *,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    byte_fallback: bool = True,
) -> Tokenizer:
    """Trains a `kind` tokenizer of `vocab_size` tokens on `texts` (model_type, character_coverage and
    byte_fallback are SentencePiece's options). Returns it; `.save(directory)` keeps it.

    Too small a vocabulary, no text or too little text for `vocab_size` tokens is a DataError that names the
    corpus (when `texts` is a `gptx.data.sources.Documents`) and the config value to change."""
    if kind == "bpe":
        return bpe_tokenizer.train(texts, vocab_size)
    if kind != "sentencepiece":
        raise ValueError(f"tokenizer kind {kind!r}: expected one of {', '.join(KINDS)}")
    return sp_tokenizer.train(texts, vocab_size, model_type, character_coverage, byte_fallback)


def train_from_config(texts: Iterable[str], t) -> Tokenizer:
    """`train` with config.tokenizer's fields (kind, vocab_size, model_type, character_coverage, byte_fallback)."""
    return train(
        texts,
        t.vocab_size,
        t.kind,
        model_type=t.model_type,
        character_coverage=t.character_coverage,
        byte_fallback=t.byte_fallback,
    )
