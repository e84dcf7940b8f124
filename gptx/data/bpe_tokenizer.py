"""Byte-level BPE (GPT-2/GPT-3's tokenizer) and any Hugging Face `tokenizer.json`, through the `tokenizers` library.

Files read: a `tokenizer.json`, or a directory with `tokenizer.json` or OpenAI's `vocab.json` + `merges.txt`
(GPT-2's pair, built exactly as transformers' GPT2TokenizerFast builds it). Special tokens come from the
directory's `tokenizer_config.json` / `special_tokens_map.json` when present, else from the vocabulary's own
(`<|endoftext|>` for GPT-2: BOS = EOS = 50256, no pad). `add_bos_token` there says whether documents start with
BOS (gptx writes true for the tokenizers it trains; GPT-2 has none and its models never saw one).

Byte-level BPE maps every byte to a symbol before merging, so any text encodes without unknown tokens and
decoding a whole sequence restores its bytes exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from gptx.data.tokenizer_base import Tokenizer, target, write_atomically
from gptx.errors import DataError

FILENAME = "tokenizer.json"
CONFIG = "tokenizer_config.json"
ENDOFTEXT = "<|endoftext|>"
_BOS_NAMES = (ENDOFTEXT, "<s>", "<bos>", "<|begin_of_text|>")
_EOS_NAMES = (ENDOFTEXT, "</s>", "<eos>", "<|end_of_text|>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


class BPETokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` with the special tokens and BOS convention of its model."""

    kind = "bpe"

    def __init__(self, tk: tokenizers.Tokenizer, special: dict | None = None, where: str = "tokenizer"):
        self.tk = tk
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

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """A `tokenizer.json` file, or a directory holding one or `vocab.json` + `merges.txt`."""
        path = os.fspath(path)
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        special = read_special_tokens(directory)
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, FILENAME)):
                path = os.path.join(path, FILENAME)
            elif all(os.path.exists(os.path.join(path, f)) for f in ("vocab.json", "merges.txt")):
                tk = gpt2_style(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"))
                return cls(tk, special, where=path)
            else:
                raise FileNotFoundError(f"{path} holds no tokenizer.json and no vocab.json + merges.txt")
        try:
            tk = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # the Rust library raises a bare Exception for a malformed file
            raise DataError(f"{path} is not a readable tokenizer.json: {str(e).splitlines()[0]}") from None
        return cls(tk, special, where=path)

    def save(self, path: str | os.PathLike) -> str:
        """tokenizer.json + tokenizer_config.json beside it: what `transformers.AutoTokenizer.from_pretrained`
        reads from a directory."""
        path = target(path, FILENAME)
        write_atomically(path, self.tk.to_str().encode())
        write_atomically(os.path.join(os.path.dirname(path), CONFIG), json.dumps(self.hf_config(), indent=2).encode())
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
            "clean_up_tokenization_spaces": False,
        }
        if self.has_pad:
            cfg["pad_token"] = piece(self.pad_id)
        return cfg

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self.tk.id_to_token(int(i)) or ""


def gpt2_style(vocab_path: str, merges_path: str) -> tokenizers.Tokenizer:
    """OpenAI's vocab.json + merges.txt as transformers' GPT2TokenizerFast builds them: byte-level pre-tokenizer
    (GPT-2's regex, no prefix space), BPE without dropout, byte-level decoder, <|endoftext|> a special token."""
    try:
        tk = tokenizers.Tokenizer(models.BPE.from_file(vocab_path, merges_path))
    except Exception as e:
        raise DataError(f"{vocab_path} + {merges_path} are not a BPE vocabulary: {str(e).splitlines()[0]}") from None
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
        path = os.path.join(directory, name)
        if os.path.exists(path):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"{path} is not valid JSON: {e}") from None
            out.update({k: v for k, v in data.items() if v is not None})
    return out


def _token_id(tk: tokenizers.Tokenizer, token, fallbacks: Sequence[str]) -> int | None:
    """Id of a token given as a string or an AddedToken dict ({"content": ...}); else of the first fallback name
    the vocabulary has."""
    if isinstance(token, dict):
        token = token.get("content")
    for name in ([token] if token else []) + list(fallbacks):
        if (i := tk.token_to_id(name)) is not None:
            return i
    return None


def train(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Trains a GPT-2-style byte-level BPE of `vocab_size` tokens (256 bytes, merges, <|endoftext|> as id 0) on
    `texts`. Documents start with BOS in gptx's packing, so the result has add_bos_token set."""
    if vocab_size < 257:
        raise DataError(f"a byte-level BPE needs at least 257 tokens (256 bytes + <|endoftext|>), not {vocab_size}")
    seen = {"docs": 0}

    def docs() -> Iterator[str]:
        for text in texts:
            if text:
                seen["docs"] += 1
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
    if not seen["docs"]:
        source = getattr(texts, "source", "")
        raise DataError(
            f"no text to train the tokenizer on: the training documents{' of ' + source if source else ''} are empty"
        )
    return BPETokenizer(tk, {"add_bos_token": True}, where="trained BPE")
