"""Defaults of config.data_prep: GPT-3's data preparation (the `prepare` command, gptx/data/prepare.py).

sources -> normalise -> heuristic filters -> exact + MinHash-LSH dedup -> quality classifier with the Pareto rule
-> decontamination -> weighted mix -> ArrayRecord shards + report.json. Train on the result with
--config.data.corpus=OUTPUT_DIR.
"""

from __future__ import annotations

import ml_collections


def defaults() -> ml_collections.ConfigDict:
    """The config.data_prep section of gptx.config.default()."""
    p = ml_collections.ConfigDict()
    # dicts with keys name, path, format, text_field, separator, weight, role, limit, filters
    # (gptx.data.readers.Source); role: curated (classifier positives, kept) | raw (negatives, Pareto-filtered) | none
    p.sources = ()
    p.output_dir = ""  # "": the workdir
    p.on_bad_utf8 = "repair"  # repair: U+FFFD for the bad bytes; skip: drop the line. Counted either way
    p.val_fraction = 0.01  # per source, held out before mixing
    p.shard_docs = 10000  # documents per ArrayRecord shard
    p.seed = 0  # hold-out, mixing and shuffling
    p.progress = True
    p.runner = "local"  # local: one process, resumable | beam: Apache Beam (gptx/data/beam), same answer
    p.beam_options = ""  # Beam pipeline options, e.g. "--runner=DataflowRunner --project=P --region=R"
    p.beam_cc_rounds = 8  # large-star/small-star rounds of fuzzy dedup's connected components
    p.clean = ml_collections.ConfigDict()
    p.clean.normalize = True  # NFC, newlines, exotic spaces, control characters, blank-line runs
    p.clean.min_words = 3
    p.clean.max_words = 100_000
    p.clean.max_symbol_ratio = 0.3  # of non-space characters that are ASCII punctuation/symbols
    p.clean.max_digit_ratio = 0.3
    p.clean.max_dup_line_frac = 0.3  # non-empty lines that repeat another line
    p.clean.max_dup_ngram_frac = 0.5  # words inside a dup_ngram-gram that occurs twice or more
    p.clean.dup_ngram = 5
    # U+FFFD (bytes that were not UTF-8) and control characters other than \t \n \r, as a share of a document's
    # characters: binary read as text scores 0.4-0.55, mojibake 0.01-0.04, the shared corpora's worst kept 0.0007
    p.clean.max_bad_char_ratio = 0.01
    p.dedup = ml_collections.ConfigDict()
    p.dedup.exact = True
    p.dedup.fuzzy = True
    p.dedup.ngram = 5  # words per shingle
    p.dedup.num_perm = 128  # MinHash size; GPT-3 (Spark MinHashLSH): 10
    p.dedup.threshold = 0.8  # Jaccard similarity of near-duplicates
    p.dedup.bands = 0  # LSH bands x rows; 0: derived from the threshold. GPT-3: 10 bands of 1 row
    p.dedup.rows = 0
    p.dedup.fn_weight = 0.8  # derived bands x rows weigh missed pairs by this, false candidates by 1 - it
    p.dedup.verify = True  # exact Jaccard check of LSH candidates (drops false positives)
    p.dedup.seed = 1
    p.quality = ml_collections.ConfigDict()
    p.quality.enabled = True  # needs curated and raw sources
    p.quality.hash_bits = 20  # 2^20 hashed unigram + bigram buckets
    p.quality.l2 = 1e-5
    p.quality.max_iter = 50  # Newton-CG iterations
    p.quality.heldout_fraction = 0.2  # of each class, for the reported accuracy and AUC
    p.quality.pareto_alpha = 9.0  # keep a raw document iff pareto(alpha) > 1 - score
    p.quality.seed = 0
    # The classifier trains on a seeded sample of each class (smallest hashes of the texts), at most this many
    # documents and bytes (0: no limit): its memory does not grow with the corpus
    p.quality.max_train_docs = 50_000
    p.quality.max_train_bytes = 50_000_000
    p.decontam = ml_collections.ConfigDict()
    p.decontam.task_files = ()  # evaluation files (JSONL/TSV/CSV/text, optionally compressed)
    p.decontam.ngram = 13
    p.decontam.min_ngram = 13  # < ngram: files of short examples use their 5th-percentile length
    p.decontam.mode = "split"  # split: cut the match +- window out (GPT-3); drop: drop the document
    p.decontam.window = 200  # characters removed on each side of a match
    p.decontam.min_piece = 200  # shorter pieces are discarded
    p.decontam.max_pieces = 10  # a document cut into more pieces is dropped
    p.decontam.max_doc_freq = 10  # N-grams in more training documents are ignored; 0: never
    p.mix = ml_collections.ConfigDict()
    p.mix.total_bytes = 0  # size of the mix; 0: all sources' bytes, redistributed by weight
    p.mix.max_epochs = 0.0  # > 0: at most this many passes over any source (it then falls short)
    return p
