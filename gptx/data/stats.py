"""Corpus statistics used as baselines for language-model losses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gptx.data.tokenizer import Tokenizer


def unigram_entropy(docs: Sequence[str], tok: Tokenizer) -> float:
    """Entropy in nats of the corpus's token distribution over the LM targets (tokens + EOS per document).

    This is the loss of the best model that ignores context: an LM must get below it to have learned
    anything beyond token frequencies.
    """
    counts = np.zeros(tok.vocab_size, np.int64)
    for doc in docs:
        counts += np.bincount(tok.encode(doc) + [tok.eos_id], minlength=tok.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
