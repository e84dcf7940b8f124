"""What gptx needs of a tokenizer, whichever library implements it.

Two implementations: SentencePiece (`gptx.data.sp_tokenizer`, gptx's default, GPT-1-style) and byte-level BPE or any
Hugging Face `tokenizer.json` (`gptx.data.bpe_tokenizer`, GPT-2/3's). `gptx.data.tokenizer` loads, finds and trains
either.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence

from gptx import fs


class Tokenizer(abc.ABC):
    """Text <-> token ids [0, vocab_size), with the special tokens the tokenizer itself defines.

    Attributes:
      kind: "sentencepiece" or "bpe" (any `tokenizers` model).
      bos_id / eos_id: begin / end of document. GPT-2 has one token, <|endoftext|>, for both.
      pad_id: filler of padded positions (always masked); the EOS id when the tokenizer has no pad (GPT-2).
      add_bos: whether the model this tokenizer belongs to saw BOS before every document in training (gptx's
        models do; GPT-2 does not). Prompts, packed documents and evaluation contexts follow it.
    """

    kind: str
    bos_id: int
    eos_id: int
    pad_id: int
    add_bos: bool

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included; task and image tokens go after it."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, newlines included; no BOS/EOS. Text is always text: a literal "<|endoftext|>" or
        "</s>" in it encodes as ordinary pieces, never as a special id, so data cannot forge a document boundary
        and `decode(encode(text)) == text`."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text, equal to it id for id (implementations run them in parallel)."""
        return [self.encode(t) for t in texts]

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids. Special tokens (bos/eos/pad) are dropped, and so are ids outside [0, vocab_size)
        (task tokens, image placeholders, a model's padding rows), so any model output decodes. A cut that
        splits a multi-byte character decodes it as U+FFFD instead of failing."""

    @abc.abstractmethod
    def id_to_piece(self, i: int) -> str:
        """The vocabulary entry of id `i` (for reports and debugging)."""

    @abc.abstractmethod
    def save(self, path: str | os.PathLike) -> str:
        """Writes the tokenizer's files: into `path` under their standard names when it is a directory, else as
        the file `path` (companions beside it). Returns the path `load` reads."""

    def document(self, text: str) -> list[int]:
        """A training document's ids: [BOS] text EOS (BOS when `add_bos`)."""
        return [*self.prefix(), *self.encode(text), self.eos_id]

    def documents(self, texts: Sequence[str]) -> list[list[int]]:
        """`document` of each text, through `encode_batch`: byte-level BPE then encodes the texts on all cores
        (1.5x the tokens/s of one `document` call each for GPT-2's on 2 busy cores, more with more cores)."""
        prefix, eos = self.prefix(), [self.eos_id]
        return [prefix + ids + eos for ids in self.encode_batch(texts)]

    def prompt(self, text: str) -> list[int]:
        """A generation prompt's ids: [BOS] text (BOS when `add_bos`, or when the text is empty)."""
        return [*self.prefix(), *self.encode(text)] or [self.bos_id]

    def prefix(self) -> list[int]:
        """Ids put before a prompt or a document: [BOS] when `add_bos`, else none."""
        return [self.bos_id] if self.add_bos else []

    def special_ids(self) -> frozenset[int]:
        """bos, eos and pad: the ids `decode` drops."""
        return frozenset((self.bos_id, self.eos_id, self.pad_id))


def target(path: str | os.PathLike, standard_name: str) -> str:
    """`path` itself, or `path`/`standard_name` when it is a directory."""
    path = os.fspath(path)
    # A bucket has no empty directories: a URL without an extension that names no object is a directory to be.
    remote_dir = fs.is_remote(path) and not os.path.splitext(fs.basename(path))[1] and not fs.isfile(path)
    return fs.join(path, standard_name) if remote_dir or fs.isdir(path) else path


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Another process never sees a half-written file (fs.write_atomic: a rename on disk, one upload on a URL)."""
    fs.write_atomic(path, data)
