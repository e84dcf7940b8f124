"""Normalisation and the heuristic filters: batch numpy statistics against a per-document Python reference."""

import collections
import unicodedata

import grain
import pytest

from gptx.data import clean, ngrams, sources

ODD = [
    "Cafe\u0301 au lait\r\nnext line  \t\r\n\r\n\r\n\r\nafter blanks",
    "\u00a0non-breaking\u2009thin\u3000ideographic\x07bell\x00nul",
    "    indented code\n\tand a tab\n\n",
    "",
]


def test_normalize_is_nfc_tidies_whitespace_keeps_indentation_and_is_idempotent():
    out = [clean.normalize(t) for t in ODD]
    assert out[0] == "Café au lait\nnext line\n\nafter blanks" and unicodedata.is_normalized("NFC", out[0])
    assert out[1] == " non-breaking thin ideographicbellnul"  # a leading space is indentation: kept
    assert out[2] == "    indented code\n\tand a tab" and out[3] == ""
    docs = sources.read_documents("bundled:tinyshakespeare")[:300]
    for t in [*ODD, *docs]:
        once = clean.normalize(t)
        assert clean.normalize(once) == once
    assert all(clean.normalize(d) == d for d in docs)  # already clean text is left alone


def _reference_stats(text, n):
    """The filter statistics of one document, written plainly."""
    visible = [c for c in text if not c.isspace() or ord(c) > 127]
    symbols = sum(1 for c in visible if ord(c) < 128 and not c.isalnum())
    digits = sum(c.isdigit() and ord(c) < 128 for c in visible)
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    words = ngrams.word_list(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    count = collections.Counter(grams)
    covered = {i + k for i, g in enumerate(grams) if count[g] > 1 for k in range(n)}
    return {
        "words": len(words),
        "symbol_ratio": symbols / max(len(visible), 1),
        "digit_ratio": digits / max(len(visible), 1),
        "dup_line_frac": 1 - len(set(lines)) / len(lines) if lines else 0.0,
        "dup_ngram_frac": len(covered) / max(len(words), 1),
    }


def test_batch_statistics_match_a_per_document_reference():
    docs = list(sources.read_documents("bundled:tinyshakespeare")[:200]) + [clean.normalize(t) for t in ODD]
    docs += ["a b c d e a b c d e a b c d e", "x\ny\nx\nx", "2024-01-01: 42 + 17 = 59 ###", "naïve ☃ café 123"]
    stats = clean.text_stats(docs, dup_ngram=5)
    for i, doc in enumerate(docs):
        ref = _reference_stats(doc, 5)
        for key, want in ref.items():
            assert stats[key][i] == pytest.approx(want), (key, doc)


def test_filters_report_the_first_failing_reason_and_run_as_grain_transforms():
    cfg = clean.FilterConfig(min_words=3, max_symbol_ratio=0.3, max_digit_ratio=0.3)
    docs = ["too short", "#### $$$$ %%%% ---- three real words", "1 2 3 4 5 6 7 8 9 0 one", "a fine sentence of words"]
    assert clean.filter_reasons(docs, cfg) == ["too_few_words", "symbol_ratio", "digit_ratio", None]
    records = [{"id": str(i), "source": "s", "text": t + "  \r\n"} for i, t in enumerate(docs)]
    ds = grain.MapDataset.source(records).map(clean.Normalize()).filter(clean.HeuristicFilter(cfg))
    assert [r["text"] for r in ds] == ["a fine sentence of words"]
