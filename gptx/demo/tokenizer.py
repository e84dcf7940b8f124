"""The demo's `tokenizer` stage: SentencePiece BPE (or byte-level BPE with --config.tokenizer.kind=bpe) trained on
the training split of the bundled corpus."""

from __future__ import annotations

import os
import time

import ml_collections

from gptx.data import loader, sources
from gptx.demo.report import Report
from gptx.train import pretrain

KIND_NAMES = {"sentencepiece": lambda t: f"SentencePiece {t.model_type.upper()}", "bpe": lambda t: "Byte-level BPE"}
# How each kind writes a piece: what a reader of the report needs to read the example pieces.
PIECE_NOTES = {
    "sentencepiece": "▁ marks a word start, <0x..> a byte",
    "bpe": "GPT-2's byte-to-character map: Ġ is a space, Ċ a newline",
}


def demo_config(cfg: ml_collections.ConfigDict, workdir: str, train: bool = False) -> ml_collections.ConfigDict:
    """A copy of `cfg` reading the demo's tokenizer (the workdir's own unless the config names one);
    with `train`, the tokenizer is trained first when it does not exist yet."""
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.data.tokenizer = pretrain.tokenizer_path(cfg, workdir)
    if train and not os.path.exists(c.data.tokenizer):
        pretrain.train_tokenizer(cfg, workdir)
    return c


def stage(cfg: ml_collections.ConfigDict, workdir: str, report: Report) -> None:
    """Train the configured tokenizer (SentencePiece or byte-level BPE) on the training split."""
    t0 = time.perf_counter()
    tok = pretrain.train_tokenizer(cfg, workdir)
    docs = sources.read_documents(cfg.data.corpus, cfg.data.doc_separator)
    train_docs, _ = loader.split_train_val(docs, cfg.data.val_fraction)
    n_tokens = sum(map(len, tok.encode_batch(train_docs)))
    n_chars = sum(len(d) for d in train_docs)
    example = train_docs[1]
    pieces = [tok.id_to_piece(i) for i in tok.encode(example)[:24]]
    note = PIECE_NOTES.get(tok.kind, "")
    report.section(
        "tokenizer",
        f"## 1. Tokenizer\n\n{KIND_NAMES[tok.kind](cfg.tokenizer)} with {tok.vocab_size} tokens, "
        f"trained in {time.perf_counter() - t0:.1f} s on {len(train_docs)} documents ({n_chars:,} characters).\n"
        f"Training split: {n_tokens:,} tokens, {n_chars / n_tokens:.2f} characters per token.\n\n"
        f"First pieces of a document: `{' '.join(repr(p)[1:-1] for p in pieces)}`"
        f"{f' ({note})' if note else ''}\n",
    )
