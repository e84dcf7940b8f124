"""SentencePiece BPE/unigram tokenizer: training and newline-preserving encode/decode.

SentencePiece reads sentences and adds a word-boundary marker to the first word of each, so text is encoded
line by line with an explicit newline token between lines: words after a newline then tokenize like words
after a space, and decode(encode(text)) == text for any text (byte fallback covers unseen characters).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

from gptx import fs
from gptx.data.tokenizer_base import Tokenizer, target, write_atomically
from gptx.errors import DataError

NEWLINE = "\n"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
FILENAME = "tokenizer.model"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model trained by `train` (unk 0, bos 1, eos 2, pad 3, a newline piece)."""

    kind = "sentencepiece"
    add_bos = True

    def __init__(self, model_proto: bytes, where: str = "tokenizer model"):
        self.model_proto = model_proto
        self.where = where
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError:  # SentencePiece's parse error is a multi-line internal message
            raise DataError(
                f"{where} is not a SentencePiece model (its {len(model_proto):,} bytes do not parse as one)"
            ) from None
        self.newline_id = self.sp.piece_to_id(NEWLINE)
        if self.newline_id == self.sp.unk_id():
            raise DataError(f"{where} has no newline piece: train it with `python -m gptx.main tokenizer`")
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eos_id

    def __getstate__(self) -> dict:
        # The processor is rebuilt from the model bytes (grain's worker processes receive a pickled copy).
        return {"model_proto": self.model_proto, "where": self.where}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"], state.get("where", "tokenizer model"))

    def __repr__(self) -> str:
        ids = f"bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id}"
        return f"SentencePieceTokenizer({self.where}: {self.vocab_size} pieces, {ids})"

    @classmethod
    def load(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        path = os.fspath(path)
        try:
            data = fs.read_bytes(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"tokenizer file {path} not found") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
        return cls(data, where=path)

    def save(self, path: str | os.PathLike) -> str:
        path = target(path, FILENAME)
        write_atomically(path, self.model_proto)
        return path

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        # Line by line: a list call would start SentencePiece's thread pool for a single text.
        lines = text.split(NEWLINE)
        return self._join(len(lines), map(self.sp.encode, lines))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # One call for the lines of all texts: SentencePiece encodes a list on all cores.
        encoded = iter(self.sp.encode([line for text in texts for line in text.split(NEWLINE)]))
        return [self._join(text.count(NEWLINE) + 1, encoded) for text in texts]

    def _join(self, n_lines: int, encoded: Iterator[list[int]]) -> list[int]:
        """The next `n_lines` encoded lines as one sequence, a newline id between lines."""
        ids: list[int] = list(next(encoded))
        for _ in range(n_lines - 1):
            ids.append(self.newline_id)
            ids.extend(next(encoded))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        lines: list[list[int]] = [[]]
        n, special = self.vocab_size, self.special_ids()
        for i in map(int, ids):
            if i == self.newline_id:
                lines.append([])
            elif 0 <= i < n and i not in special:
                lines[-1].append(i)
        return NEWLINE.join(self.sp.decode(line) for line in lines)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))


def train(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    byte_fallback: bool = True,
) -> SentencePieceTokenizer:
    """Trains a SentencePiece model on the lines of `texts`; returns it (call .save to keep it).

    Too little text for `vocab_size` pieces (or none) is a DataError naming the corpus when `texts` knows it
    (`gptx.data.sources.Documents`), instead of SentencePiece's internal RuntimeError.
    """
    seen = {"lines": 0, "chars": 0}

    def lines() -> Iterator[str]:
        for text in texts:
            for line in text.split(NEWLINE):
                if line:
                    seen["lines"] += 1
                    seen["chars"] += len(line)
                    yield line

    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(),
            model_writer=proto,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            # Keep text as it is: no NFKC folding, no whitespace squeezing, so decoding is exact.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            user_defined_symbols=[NEWLINE],
            max_sentence_length=1 << 16,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise _train_error(e, texts, vocab_size, seen) from None
    return SentencePieceTokenizer(proto.getvalue(), where="trained SentencePiece model")


def _train_error(e: RuntimeError, texts: Iterable[str], vocab_size: int, seen: dict) -> Exception:
    """SentencePiece's internal training error as a DataError that says what to change; others unchanged."""
    source = getattr(texts, "source", "")
    where = f" of {source}" if source else ""
    if not seen["lines"]:
        return DataError(f"no text to train the tokenizer on: the training documents{where} are empty")
    if most := re.search(r"value <= (\d+)", str(e)):
        return DataError(
            f"too little text to train a {vocab_size}-piece tokenizer: the training documents{where} "
            f"({seen['lines']:,} lines, {seen['chars']:,} characters) support at most {most.group(1)} pieces; "
            f"use more text or set --config.tokenizer.vocab_size={most.group(1)} (or less)"
        )
    if least := re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e)):
        return DataError(
            f"a {vocab_size}-piece tokenizer cannot hold the {least.group(1)} characters, bytes and special pieces "
            f"that the training documents{where} need: set --config.tokenizer.vocab_size={least.group(1)} or more "
            "(or lower --config.tokenizer.character_coverage)"
        )
    return e
