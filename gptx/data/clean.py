"""Normalisation and heuristic quality filters (the cheap first stages of `prepare`).

`normalize` puts text in Unicode NFC and tidies whitespace without touching indentation or words.
`filter_reasons` computes, for a batch of documents at once with numpy, the Gopher-style statistics that mark
boilerplate, lists, tables and spam: word count, symbol and digit ratios, the fraction of repeated lines and the
fraction of words covered by repeated word n-grams; and, checked first, the share of U+FFFD and control
characters, which marks bytes that are not text at all (a binary file read as text, a damaged or mis-decoded
file). GPT-3's Appendix A names only its classifier and fuzzy dedup for Common Crawl; this check is the kind of
cheap rule-based cleaning such pipelines run first (as Gopher's and C4's rules do). A document fails the first
threshold it breaks, and the reason is counted in the report. `Normalize` and `HeuristicFilter` run the same
functions as grain transforms.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Sequence

import grain
import numpy as np

from gptx.data import ngrams

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Unicode space separators and line/paragraph separators other than the ASCII space and tab.
_ODD_SPACE = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000\u2028\u2029\u0085]")
_BLANK_RUN = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """NFC, \\r\\n and \\r -> \\n, exotic spaces -> ' ', control characters removed, trailing spaces stripped,
    at most one blank line in a row, no leading/trailing blank lines. Indentation and word spacing are kept."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():  # exotic spaces are never ASCII; most documents skip this scan
        text = _ODD_SPACE.sub(" ", text)
    text = _CONTROL.sub("", text)
    if " \n" in text or "\t\n" in text:  # a substring test is far cheaper than the regex on every document
        text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_RUN.sub("\n\n", text)
    return text.strip("\n").rstrip()


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the heuristic filters (config.data_prep.clean); a document must satisfy all of them.

    `max_bad_char_ratio` bounds the share of the document's characters that are U+FFFD (bytes that were not
    UTF-8, repaired) or control characters (C0 other than \\t \\n \\r, DEL, C1). It sees the text after
    `normalize`, which removes C0 controls, so there it is mostly the U+FFFD share: random bytes score 0.4-0.55,
    mojibake (UTF-8 decoded as Latin-1, then encoded again) 0.01-0.04, a Latin-1 name in a long changelog under
    0.001. The default 0.01 drops the first two and keeps the last (on the shared corpora: 3 mojibake fortunes of
    173,142 documents).
    Other ratios are over the document's non-whitespace characters (symbol: neither a letter nor a digit); the
    repeated-line fraction is over its non-empty lines; the repeated n-gram fraction is the share of its words
    that lie in a word `dup_ngram`-gram occurring more than once in the document.
    """

    min_words: int = 3
    max_words: int = 100_000
    max_symbol_ratio: float = 0.3
    max_digit_ratio: float = 0.3
    max_dup_line_frac: float = 0.3
    max_dup_ngram_frac: float = 0.5
    dup_ngram: int = 5
    max_bad_char_ratio: float = 0.01

    @classmethod
    def from_config(cls, c) -> FilterConfig:
        return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls)})


def text_stats(texts: Sequence[str], dup_ngram: int = 5) -> dict[str, np.ndarray]:
    """Per-document statistics [D] of the heuristic filters, computed for the whole batch with numpy."""
    words = ngrams.words(texts)
    n_words = words.counts
    symbol, digit, bad = _char_ratios(texts)
    dup_line = np.array([_dup_line_frac(t) for t in texts])
    return {
        "bad_char_ratio": bad,
        "words": n_words,
        "symbol_ratio": symbol,
        "digit_ratio": digit,
        "dup_line_frac": dup_line,
        "dup_ngram_frac": dup_ngram_frac(words, dup_ngram),
    }


def _bad_chars(raw: np.ndarray) -> np.ndarray:
    """[bytes] True at the first byte of each U+FFFD (EF BF BD) and control character: C0 but \\t \\n \\r, DEL,
    and C1 (C2 80..C2 9F)."""
    bad = ((raw < 32) & (raw != 9) & (raw != 10) & (raw != 13)) | (raw == 127)
    lead = raw[:-1] == 0xC2
    bad[:-1] |= lead & (raw[1:] >= 0x80) & (raw[1:] <= 0x9F)
    bad[:-2] |= (raw[:-2] == 0xEF) & (raw[1:-1] == 0xBF) & (raw[2:] == 0xBD)
    return bad


def _char_ratios(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[D] symbol and digit shares of each document's non-whitespace characters, and the share of all its
    characters that are U+FFFD or control characters, batch by batch."""
    out = []
    for batch in ngrams.batches(texts):
        enc = [t.encode("utf-8", "surrogatepass") for t in batch]
        raw = np.frombuffer(b"\n".join(enc), np.uint8)  # the joining newline counts for nobody
        low, word = ngrams.lower_and_word_mask(raw)
        lead = (raw & 0xC0) != 0x80  # not a UTF-8 continuation byte: one per character
        visible = lead & (raw != 32) & ((raw < 9) | (raw > 13))
        starts = np.concatenate([[0], np.cumsum([len(e) + 1 for e in enc])[:-1]])
        # reduceat needs in-range starts; empty documents are fixed up by the `chars` guard below.
        idx = np.minimum(starts, max(len(raw) - 1, 0))
        sums = [
            np.add.reduceat(m.astype(np.int64), idx) if len(raw) else np.zeros(len(enc), np.int64)
            for m in (visible, visible & ~word, (low >= 48) & (low <= 57), _bad_chars(raw))
        ]
        lens = np.array([len(e) for e in enc])
        chars, symbols, digits, bad = (np.where(lens > 0, x, 0) for x in sums)
        n_chars = np.array([len(t) for t in batch])
        out.append((symbols / np.maximum(chars, 1), digits / np.maximum(chars, 1), bad / np.maximum(n_chars, 1)))
    if not out:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return tuple(np.concatenate([o[k] for o in out]) for k in range(3))


def _dup_line_frac(text: str) -> float:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0


def dup_ngram_frac(words: ngrams.Words, n: int) -> np.ndarray:
    """[D] share of each document's words covered by a word n-gram that occurs at least twice in it."""
    grams = ngrams.ngrams(words, n, short="drop")
    doc = ngrams.segment_ids(grams.offsets)
    # Sort by (document, hash); equal neighbours are repeats within a document.
    order = np.lexsort((grams.hashes, doc))
    h, dd = grams.hashes[order], doc[order]
    same = (h[1:] == h[:-1]) & (dd[1:] == dd[:-1])
    repeated = np.zeros(len(h), bool)
    repeated[1:] |= same
    repeated[:-1] |= same
    rep = np.zeros(len(h), bool)
    rep[order] = repeated
    # Coverage: +1 at the first word of a repeated n-gram, -1 after its last word (flat word positions).
    starts = grams.starts[rep]
    cover = np.zeros(len(words.hashes) + 1, np.int64)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    counts = words.counts
    per_doc = np.add.reduceat(covered.astype(np.int64), np.minimum(words.offsets[:-1], max(len(covered) - 1, 0)))
    per_doc = np.where(counts > 0, per_doc if len(covered) else 0, 0)
    return per_doc / np.maximum(counts, 1)


def filter_reasons(texts: Sequence[str], cfg: FilterConfig) -> list[str | None]:
    """For each document, the first filter it fails ("too_few_words", ...) or None when it passes. Documents
    are checked ~1 MB of text at a time (`ngrams.batches`), so memory does not grow with the input."""
    return [why for batch in ngrams.batches(texts) for why in _filter_batch(batch, cfg)]


def _filter_batch(texts: Sequence[str], cfg: FilterConfig) -> list[str | None]:
    if not texts:
        return []
    s = text_stats(texts, cfg.dup_ngram)
    checks = [
        ("bad_char_ratio", s["bad_char_ratio"] > cfg.max_bad_char_ratio),
        ("too_few_words", s["words"] < cfg.min_words),
        ("too_many_words", s["words"] > cfg.max_words),
        ("symbol_ratio", s["symbol_ratio"] > cfg.max_symbol_ratio),
        ("digit_ratio", s["digit_ratio"] > cfg.max_digit_ratio),
        ("repeated_lines", s["dup_line_frac"] > cfg.max_dup_line_frac),
        ("repeated_ngrams", s["dup_ngram_frac"] > cfg.max_dup_ngram_frac),
    ]
    reasons: list[str | None] = [None] * len(texts)
    for name, fails in reversed(checks):  # reversed, so the first failing check in the list wins
        for i in np.flatnonzero(fails):
            reasons[i] = name
    return reasons


class Normalize(grain.transforms.Map):
    """`normalize` on the text of a record {"text", ...}, as a grain transform."""

    def map(self, record: dict) -> dict:
        return {**record, "text": normalize(record["text"])}


class HeuristicFilter(grain.transforms.Filter):
    """Keeps records that pass every heuristic filter, as a grain transform."""

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg

    def filter(self, record: dict) -> bool:
        return filter_reasons([record["text"]], self.cfg)[0] is None
