"""Byte-level BPE (GPT-2/GPT-3's tokenizer) and any Hugging Face `tokenizer.json`, through the `tokenizers` library.

Files read: a `tokenizer.json`, or a directory with `tokenizer.json` or OpenAI's `vocab.json` + `merges.txt`
(GPT-2's pair, built exactly as transformers' GPT2TokenizerFast builds it). Special tokens come from the
directory's `tokenizer_config.json` / `special_tokens_map.json` when present, else from the vocabulary's own
(`<|endoftext|>` for GPT-2: BOS = EOS = 50256, no pad). `add_bos_token` there says whether documents start with
BOS (gptx writes true for the tokenizers it trains; GPT-2 has none and its models never saw one).

Byte-level BPE maps every byte to a symbol before merging, so any text encodes without unknown tokens and
decoding a whole sequence restores its bytes exactly. Text is always text: "<|endoftext|>" written inside a
document encodes as ordinary pieces ("<|", "endoftext", "|>"), as OpenAI's original encoder did, never as the
special id (transformers' GPT2TokenizerFast matches it by default; `split_special_tokens=True` gives gptx's ids).
Only the code that frames documents, prompts, tasks and images puts special ids into a sequence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from gptx import fs
from gptx.data.tokenizer_base import Tokenizer, target, write_atomically
from gptx.errors import DataError

FILENAME = "tokenizer.json"
CONFIG = "tokenizer_config.json"
OPENAI_FILES = ("vocab.json", "merges.txt")
ENDOFTEXT = "<|endoftext|>"
MIN_VOCAB = 257  # the 256 byte symbols and <|endoftext|>
_BOS_NAMES = (ENDOFTEXT, "<s>", "<bos>", "<|begin_of_text|>")
_EOS_NAMES = (ENDOFTEXT, "</s>", "<eos>", "<|end_of_text|>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


class BPETokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` with the special tokens and BOS convention of its model."""

    kind = "bpe"

    def __init__(self, tk: tokenizers.Tokenizer, special: dict | None = None, where: str = "tokenizer"):
        self.tk = tk
        self.where = where
        _split_special_tokens(tk)
        special = dict(special or {})
        self.add_bos = bool(special.get("add_bos_token", False))
        eos = _token_id(tk, special.get("eos_token"), _EOS_NAMES)
        if eos is None:
            raise DataError(f"{where} defines no end-of-text token: name it as eos_token in its {CONFIG}")
        bos = _token_id(tk, special.get("bos_token"), _BOS_NAMES)
        pad = _token_id(tk, special.get("pad_token"), _PAD_NAMES)
        self.eos_id, self.bos_id = eos, eos if bos is None else bos
        self.pad_id = eos if pad is None else pad
        self.has_pad = pad is not None
        # Ids may have holes in a hand-made tokenizer.json: the id space ends after the largest id, so that
        # task and image tokens (vocab_size, vocab_size + 1, ...) never collide with a piece.
        ids = tk.get_vocab(with_added_tokens=True).values()
        self._vocab_size = max(tk.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)

    def __setstate__(self, state: dict) -> None:
        # Pickling (grain's worker processes) keeps tokenizer.json's contents, not the runtime switch.
        self.__dict__.update(state)
        _split_special_tokens(self.tk)

    def __repr__(self) -> str:
        pad = self.pad_id if self.has_pad else f"{self.pad_id} (eos)"
        return (
            f"BPETokenizer({self.where}: {self.vocab_size} tokens, bos={self.bos_id}, eos={self.eos_id}, "
            f"pad={pad}, add_bos={self.add_bos})"
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """A `tokenizer.json` file, or a directory holding one or `vocab.json` + `merges.txt` (either of which
        may be named instead of the directory)."""
        path = os.fspath(path)
        if fs.basename(path) in OPENAI_FILES:
            path = fs.dirname(path) or "."
        directory = path if fs.isdir(path) else fs.dirname(path)
        special = read_special_tokens(directory)
        if fs.isdir(path):
            if fs.exists(fs.join(path, FILENAME)):
                path = fs.join(path, FILENAME)
            else:
                vocab, merges = (fs.join(path, f) for f in OPENAI_FILES)
                return cls(gpt2_style(vocab, merges), special, where=path)
        if not fs.isfile(path):
            raise FileNotFoundError(f"tokenizer file {path} not found")
        try:
            tk = tokenizers.Tokenizer.from_str(fs.read_text(path))  # from_str: the file may be a URL
        except (FileNotFoundError, fs.StorageError):
            raise
        except Exception as e:  # the Rust library raises a bare Exception for a malformed file
            raise DataError(f"{path} is not a readable tokenizer.json: {_first_line(e)}") from None
        return cls(tk, special, where=path)

    def save(self, path: str | os.PathLike) -> str:
        """tokenizer.json + tokenizer_config.json beside it: what `transformers.AutoTokenizer.from_pretrained`
        reads from a directory (it then gives gptx's ids, BOS included where `add_bos`)."""
        path = target(path, FILENAME)
        write_atomically(path, self.tk.to_str().encode())
        write_atomically(fs.join(fs.dirname(path), CONFIG), json.dumps(self.hf_config(), indent=2).encode())
        return path

    def hf_config(self) -> dict:
        """The tokenizer_config.json of this tokenizer (transformers' PreTrainedTokenizerFast keys)."""
        piece = self.tk.id_to_token
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": piece(self.bos_id),
            "eos_token": piece(self.eos_id),
            "add_bos_token": self.add_bos,
            "add_eos_token": False,
            # transformers then encodes "<|endoftext|>" in text as text, as gptx does.
            "split_special_tokens": True,
            "clean_up_tokenization_spaces": False,
        }
        if self.has_pad:
            cfg["pad_token"] = piece(self.pad_id)
        return cfg

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The Rust side encodes the batch on all cores; "fast" skips the character offsets nobody reads here.
        return [e.ids for e in self.tk.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        n, special = self._vocab_size, self.special_ids()
        keep = [i for i in map(int, ids) if 0 <= i < n and i not in special]
        return self.tk.decode(keep, skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self.tk.id_to_token(int(i)) or ""


def _split_special_tokens(tk: tokenizers.Tokenizer) -> None:
    """Makes `tk` encode special-token strings found in text as ordinary text (see the module docstring)."""
    tk.encode_special_tokens = True


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def gpt2_style(vocab_path: str, merges_path: str) -> tokenizers.Tokenizer:
    """OpenAI's vocab.json + merges.txt as transformers' GPT2TokenizerFast builds them: byte-level pre-tokenizer
    (GPT-2's regex, no prefix space), BPE without dropout, byte-level decoder, <|endoftext|> a special token."""
    missing = [p for p in (vocab_path, merges_path) if not fs.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]} not found: a GPT-2-style tokenizer needs {' + '.join(OPENAI_FILES)} (or a {FILENAME}) "
            f"in {fs.dirname(missing[0]) or '.'}"
        )
    try:  # BPE.from_file opens local files only: a URL's pair is downloaded first
        with fs.local_file(vocab_path) as vocab, fs.local_file(merges_path) as merges:
            tk = tokenizers.Tokenizer(models.BPE.from_file(vocab, merges))
    except Exception as e:
        raise DataError(f"{vocab_path} + {merges_path} are not a BPE vocabulary: {_first_line(e)}") from None
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    if tk.token_to_id(ENDOFTEXT) is not None:
        tk.add_special_tokens([tokenizers.AddedToken(ENDOFTEXT, special=True, normalized=False)])
    return tk


def read_special_tokens(directory: str) -> dict:
    """bos/eos/pad token strings and add_bos_token from a directory's special_tokens_map.json and
    tokenizer_config.json (the latter wins); {} when it has neither."""
    out: dict = {}
    for name in ("special_tokens_map.json", CONFIG):
        path = fs.join(directory, name)
        if not fs.exists(path):
            continue
        try:
            data = json.loads(fs.read_text(path))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise DataError(f"{path} is not a JSON object of tokenizer settings (it holds a {type(data).__name__})")
        out.update({k: v for k, v in data.items() if v is not None})
    return out


def _token_id(tk: tokenizers.Tokenizer, token, fallbacks: Sequence[str]) -> int | None:
    """Id of a token given as a string or an AddedToken dict ({"content": ...}); else of the first fallback name
    the vocabulary has."""
    if isinstance(token, dict):
        token = token.get("content")
    for name in ([token] if isinstance(token, str) and token else []) + list(fallbacks):
        if (i := tk.token_to_id(name)) is not None:
            return i
    return None


def train(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Trains a GPT-2-style byte-level BPE of `vocab_size` tokens (<|endoftext|> as id 0, the 256 bytes, merges
    of pairs seen at least `min_frequency` times) on `texts`. Documents start with BOS in gptx's packing, so the
    result has add_bos_token set (and its tokenizer.json adds BOS for transformers' callers too).

    Too small a `vocab_size`, no text, or too little text for `vocab_size` tokens (the merges run out) is a
    DataError naming the corpus when `texts` knows it (`gptx.data.sources.Documents`).
    """
    if vocab_size < MIN_VOCAB:
        raise DataError(
            f"a byte-level BPE needs at least {MIN_VOCAB} tokens (256 bytes + {ENDOFTEXT}), not {vocab_size}: "
            f"set --config.tokenizer.vocab_size={MIN_VOCAB} or more"
        )
    seen = {"docs": 0, "chars": 0}

    def docs() -> Iterator[str]:
        for text in texts:
            if text:
                seen["docs"] += 1
                seen["chars"] += len(text)
                yield text

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[tokenizers.AddedToken(ENDOFTEXT, special=True, normalized=False)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(docs(), trainer=trainer)
    source = getattr(texts, "source", "")
    where = f" of {source}" if source else ""
    if not seen["docs"]:
        raise DataError(f"no text to train the tokenizer on: the training documents{where} are empty")
    got = tk.get_vocab_size(with_added_tokens=True)
    if got < vocab_size:
        raise DataError(
            f"too little text to train a {vocab_size}-token byte-level BPE: the training documents{where} "
            f"({seen['docs']:,} documents, {seen['chars']:,} characters) have pairs seen {min_frequency}+ times "
            f"for only {got} tokens; use more text or set --config.tokenizer.vocab_size={got} (or less)"
        )
    eot = tk.token_to_id(ENDOFTEXT)
    tk.post_processor = processors.TemplateProcessing(
        single=f"{ENDOFTEXT} $A", pair=f"{ENDOFTEXT} $A $B:1", special_tokens=[(ENDOFTEXT, eot)]
    )
    return BPETokenizer(tk, {"add_bos_token": True}, where="trained BPE")
