"""Words and word n-grams of many documents as stable 64-bit hashes, computed with numpy over UTF-8 bytes.

Dedup shingles, quality-classifier features and contamination n-grams all start here, so the three stages
agree on what a word is: a maximal run of ASCII letters and digits or non-ASCII characters, ASCII-lowercased.
Punctuation and whitespace separate words and are otherwise ignored (GPT-3 checks contamination "ignoring
punctuation, whitespace and casing"). `WORD_RE` is the same definition on `str`, for the few places that need
character offsets.

Hashes are stable across runs and processes (no Python `hash()` salt): a word's hash is a polynomial over its
bytes mod 2^64, computed for every word of a batch with one cumulative sum, then mixed by splitmix64's finaliser.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence

import numpy as np

WORD_RE = re.compile(r"[0-9A-Za-z\u0080-\U0010FFFF]+")

_U64 = np.uint64
_P = _U64(0x100000001B3)  # odd, so invertible mod 2^64
_P_INV = _U64(pow(0x100000001B3, -1, 1 << 64))
_M = _U64(0x9E3779B97F4A7C15)  # n-gram combiner (odd)
_BATCH_BYTES = 1 << 20  # ~1 MB of text per numpy batch keeps the uint64 temporaries in a few tens of MB
_powers: dict[str, np.ndarray] = {}


def mix64(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit over the output.
    `out=z` mixes in place."""
    z = np.bitwise_xor(z, z >> _U64(30), out=out)
    z *= _U64(0xBF58476D1CE4E5B9)
    z ^= z >> _U64(27)
    z *= _U64(0x94D049BB133111EB)
    z ^= z >> _U64(31)
    return z


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i mod 2^64 for i < n (cached, grown by doubling)."""
    if "p" not in _powers or len(_powers["p"]) < n:
        size = max(n, 2 * len(_powers.get("p", ())), 2 * _BATCH_BYTES)  # 2 x 16 MB: batches rarely outgrow it
        for key, base in (("p", _P), ("i", _P_INV)):
            a = np.full(size, base, _U64)
            a[0] = 1
            _powers[key] = np.cumprod(a)  # wraps mod 2^64, which is the arithmetic we want
    return _powers["p"][:n], _powers["i"][:n]


def lower_and_word_mask(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes [N] uint8 -> (ASCII-lowercased bytes [N], is-word-byte mask [N] bool)."""
    u8 = np.uint8
    low = raw + ((raw - u8(65)) < u8(26)) * u8(32)  # A-Z -> a-z; uint8 wraparound makes this a range test
    word = ((low - u8(97)) < u8(26)) | ((low - u8(48)) < u8(10)) | (low >= u8(128))
    return low, word


@dataclasses.dataclass
class Words:
    """Word hashes of D documents: `hashes` [W] uint64 in document order, `offsets` [D+1] (document d owns
    hashes[offsets[d]:offsets[d+1]])."""

    hashes: np.ndarray
    offsets: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def batches(texts: Sequence[str]) -> Iterator[list[str]]:
    """Consecutive runs of texts of about _BATCH_BYTES characters each."""
    batch: list[str] = []
    size = 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _words_of_batch(texts: list[str]) -> Words:
    enc = [t.encode("utf-8", "surrogatepass") for t in texts]
    raw = np.frombuffer(b"\n".join(enc), np.uint8)  # "\n" is not a word byte: words never span documents
    low, word = lower_and_word_mask(raw)
    w = word.view(np.int8)
    edge = np.empty(len(w) + 1, np.int8)
    edge[0], edge[-1] = w[0] if len(w) else 0, -w[-1] if len(w) else 0
    np.subtract(w[1:], w[:-1], out=edge[1:-1])
    starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    pw, pinv = _power_tables(len(low))
    # Prefix sums of b_i * P^i; a word's hash is its slice sum shifted back to position 0.
    prefix = np.cumsum(np.multiply(low, pw, dtype=_U64))
    before = np.where(starts > 0, prefix[np.maximum(starts - 1, 0)], _U64(0))
    hashes = (prefix[ends - 1] - before) * pinv[starts]
    mix64(hashes, out=hashes)
    lens = np.fromiter(map(len, enc), np.int64, len(enc))
    doc_starts = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])
    offsets = np.append(np.searchsorted(starts, doc_starts), len(starts))
    return Words(hashes, offsets.astype(np.int64))


def words(texts: Sequence[str]) -> Words:
    """Word hashes of every text (see the module docstring for what a word is)."""
    parts = [_words_of_batch(b) for b in batches(texts)]
    if not parts:
        return Words(np.zeros(0, _U64), np.zeros(1, np.int64))
    hashes = np.concatenate([p.hashes for p in parts])
    base = np.cumsum([0] + [len(p.hashes) for p in parts])
    offsets = [p.offsets[:-1] + b for p, b in zip(parts, base[:-1], strict=True)] + [[len(hashes)]]
    return Words(hashes, np.concatenate(offsets).astype(np.int64))


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def word_list(text: str) -> list[str]:
    """The words of one text as strings, ASCII-lowercased, in order: the `str` twin of `words`."""
    return WORD_RE.findall(text.translate(_ASCII_LOWER))


@dataclasses.dataclass
class Ngrams:
    """Word n-gram hashes of D documents: `hashes` [S] uint64, `offsets` [D+1] (document d owns
    hashes[offsets[d]:offsets[d+1]]), and `starts` [S], the flat index into `Words.hashes` of each n-gram's first
    word."""

    hashes: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray


def _rolling(h: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """mix64 of the n-gram recurrence g = g * M + h over words idx, idx+1, ..., idx+n-1."""
    g = h[idx]
    for k in range(1, n):
        g = g * _M + h[idx + k]
    return mix64(g)


def _all_ngrams(h: np.ndarray, n: int) -> np.ndarray:
    """The n-gram hash starting at every flat word position (contiguous slices: faster than gathers)."""
    m = max(len(h) - n + 1, 0)
    g = h[:m].copy()
    for k in range(1, n):
        g *= _M
        g += h[k : k + m]
    return mix64(g, out=g)


def ngrams(w: Words, n: int, short: str = "whole") -> Ngrams:
    """The n-grams of consecutive words of each document, in document order.

    A document with fewer than n words (but at least one) yields one n-gram of all its words when
    `short="whole"` (so a one-line quote still has a shingle) and none when `short="drop"`.
    """
    if short not in ("whole", "drop"):
        raise ValueError(f"short must be 'whole' or 'drop', got {short!r}")
    h, counts, offsets = w.hashes, w.counts, w.offsets
    m = max(len(h) - n + 1, 0)
    # An n-gram may start anywhere except in the last n-1 words of its document.
    valid = np.ones(m, bool)
    ends = offsets[1:]
    for k in range(1, n):
        last = ends - k
        valid[last[(last >= offsets[:-1]) & (last < m)]] = False
    starts = np.flatnonzero(valid)
    per_doc = np.maximum(counts - n + 1, 0)
    if short == "drop":
        return Ngrams(_all_ngrams(h, n)[valid], np.concatenate([[0], np.cumsum(per_doc)]), starts)
    short_docs = np.flatnonzero((counts > 0) & (counts < n))
    per_doc[short_docs] = 1
    out_offsets = np.concatenate([[0], np.cumsum(per_doc)])
    hashes = np.empty(out_offsets[-1], _U64)
    out_starts = np.empty(out_offsets[-1], np.int64)
    is_full = np.ones(out_offsets[-1], bool)
    is_full[out_offsets[short_docs]] = False
    hashes[is_full], out_starts[is_full] = _all_ngrams(h, n)[valid], starts
    for k in range(1, n):  # the whole-document n-gram of the documents with exactly k words
        docs = short_docs[counts[short_docs] == k]
        hashes[out_offsets[docs]] = _rolling(h, offsets[docs], k)
        out_starts[out_offsets[docs]] = offsets[docs]
    return Ngrams(hashes, out_offsets.astype(np.int64), out_starts)


def segment_ids(offsets: np.ndarray) -> np.ndarray:
    """[S] document index of each element of a flat array with per-document `offsets` [D+1]."""
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
