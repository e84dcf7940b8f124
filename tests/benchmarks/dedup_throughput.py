"""Fuzzy-dedup throughput: gptx's MinHash-LSH against datasketch's MinHash + MinHashLSH, same shingles,
num_perm and threshold, on debian_docs.jsonl.gz + fortunes.jsonl (17,159 documents, 34 MB).

    python tests/benchmarks/dedup_throughput.py [--num_perm 128 --threshold 0.8 --ngram 5 --repeats 2]

Both sides start from the texts and end with their duplicate pairs or clusters:
- gptx: `dedup.near_duplicates` (byte-level word hashing, n-gram shingles, vectorised MinHash, LSH buckets,
  union-find with the exact Jaccard check of candidates, as the `prepare` stage runs it);
- datasketch: the same word n-grams as strings (`ngrams.word_list`, joined by spaces; a document shorter than n
  words is one shingle), `MinHash(num_perm).update_batch`, `MinHashLSH(threshold, num_perm).insert`, then a
  query per document for its candidate pairs. datasketch picks its bands x rows from the threshold with the
  same weighted-error rule as gptx (both reported); `--fn_weight` sets both sides' weight of missed pairs
  (default 0.8, gptx's `config.data_prep.dedup.fn_weight`; 0.5 is datasketch's own default).
The sides alternate `--repeats` times (the machine may be shared); medians are reported.

Agreement (Jaccard index of the two pair sets): `candidate_agreement` for the raw LSH candidates (each side's
random hash functions decide the borderline pairs), and `pair_agreement` for the duplicate pairs, i.e. the
candidates whose exact Jaccard similarity reaches the threshold. Recall of each side is against all pairs at
or above the threshold found by brute force (sparse set intersections over all pairs). stdout gets exactly one
JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time

import numpy as np
from machine import LoadWatch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from gptx.data import dedup, ngrams  # noqa: E402

CORPORA = os.path.join(REPO, "..", "shared", "data", "corpora")


def load_texts() -> list[str]:
    texts = []
    with gzip.open(os.path.join(CORPORA, "debian_docs.jsonl.gz"), "rt", encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f]
    with open(os.path.join(CORPORA, "fortunes.jsonl"), encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f]
    return texts


def run_gptx(texts: list[str], cfg: dedup.DedupConfig) -> tuple[float, dedup.FuzzyResult]:
    t0 = time.perf_counter()
    result = dedup.near_duplicates(texts, cfg)
    return time.perf_counter() - t0, result


def run_datasketch(texts: list[str], cfg: dedup.DedupConfig) -> tuple[float, set, tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=(1 - cfg.fn_weight, cfg.fn_weight))
    sketches = {}
    for i, text in enumerate(texts):
        words = ngrams.word_list(text)
        if not words:
            continue
        n = cfg.ngram
        shingles = [" ".join(words[k : k + n]).encode() for k in range(len(words) - n + 1)] or [
            " ".join(words).encode()
        ]
        m = MinHash(num_perm=cfg.num_perm)
        m.update_batch(shingles)
        lsh.insert(i, m)
        sketches[i] = m
    pairs = {(min(i, j), max(i, j)) for i, m in sketches.items() for j in lsh.query(m) if j != i}
    return time.perf_counter() - t0, pairs, (lsh.b, lsh.r)


def agreement(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def main(argv=None) -> None:
    load = LoadWatch()
    p = argparse.ArgumentParser()
    p.add_argument("--num_perm", type=int, default=128)
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--ngram", type=int, default=5)
    p.add_argument(
        "--fn_weight",
        type=float,
        default=0.8,
        help="both sides' weight of missed pairs (gptx's default; datasketch's: 0.5)",
    )
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    cfg = dedup.DedupConfig(
        num_perm=args.num_perm, threshold=args.threshold, ngram=args.ngram, fn_weight=args.fn_weight
    )
    texts = load_texts()
    run_gptx(texts[:200], cfg)  # warm caches (power tables, imports) outside the timing

    gptx_s, ds_s = [], []
    for r in range(args.repeats):
        print(f"repeat {r + 1}/{args.repeats}", file=sys.stderr)
        t, result = run_gptx(texts, cfg)
        gptx_s.append(t)
        t, ds_pairs, ds_shape = run_datasketch(texts, cfg)
        ds_s.append(t)

    shingles = ngrams.ngrams(ngrams.words(texts), cfg.ngram)
    sig = dedup.signatures(shingles, cfg.num_perm, cfg.seed)
    gx_pairs = set(map(tuple, dedup.candidate_pairs(sig, *cfg.lsh_shape(), np.diff(shingles.offsets) > 0).tolist()))
    truth_arr, _ = dedup.brute_force_pairs(shingles, cfg.threshold)
    truth = set(map(tuple, truth_arr.tolist()))
    gx_dup, ds_dup = gx_pairs & truth, ds_pairs & truth  # candidates whose exact Jaccard passes the threshold
    n = len(texts)
    gx_rate, ds_rate = n / statistics.median(gptx_s), n / statistics.median(ds_s)
    print(
        json.dumps(
            {
                "benchmark": "dedup_throughput",
                "documents": n,
                "megabytes": round(sum(len(t.encode()) for t in texts) / 1e6, 2),
                "num_perm": cfg.num_perm,
                "threshold": cfg.threshold,
                "ngram": cfg.ngram,
                "fn_weight": cfg.fn_weight,
                "gptx_bands_rows": list(cfg.lsh_shape()),
                "datasketch_bands_rows": list(ds_shape),
                "gptx_docs_per_s": round(gx_rate, 1),
                "datasketch_docs_per_s": round(ds_rate, 1),
                "ratio": round(gx_rate / ds_rate, 2),
                "gptx_seconds": [round(t, 3) for t in gptx_s],
                "datasketch_seconds": [round(t, 3) for t in ds_s],
                "true_pairs": len(truth),
                "gptx_duplicate_pairs": len(gx_dup),
                "datasketch_duplicate_pairs": len(ds_dup),
                "pair_agreement": round(agreement(gx_dup, ds_dup), 4),
                "candidate_agreement": round(agreement(gx_pairs, ds_pairs), 4),
                "gptx_recall": round(len(gx_dup) / max(len(truth), 1), 4),
                "datasketch_recall": round(len(ds_dup) / max(len(truth), 1), 4),
                "gptx_clusters": len(result.clusters),
                "gptx_docs_removed": sum(len(c) - 1 for c in result.clusters),
                **load.fields(),
            }
        )
    )


if __name__ == "__main__":
    main()
