"""Exact and MinHash-LSH deduplication (GPT-3 Sec. 2.2) against closed forms and brute-force Jaccard."""

import gzip
import json

import numpy as np
import pytest
import scipy.integrate
from conftest import SHARED_DATA

from gptx.data import dedup, ngrams

CORPORA = SHARED_DATA / "corpora"
needs_corpora = pytest.mark.skipif(
    not (CORPORA / "fortunes.jsonl").exists(), reason=f"shared corpora not found under {CORPORA}"
)


def _jsonl_texts(path, limit=None):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for i, line in enumerate(f) if limit is None or i < limit]


def _set_pairs(n_pairs, size, jaccard, rng):
    """Shingle hashes of n_pairs pairs of sets of `size` elements with exactly the given Jaccard similarity."""
    shared = int(round(2 * size * jaccard / (1 + jaccard)))  # |A∩B| / (2 size - |A∩B|) = J
    hashes, counts = [], []
    for _ in range(n_pairs):
        pool = rng.integers(0, 2**63, 2 * size, dtype=np.uint64)  # distinct with overwhelming probability
        a, b = pool[:size], np.concatenate([pool[:shared], pool[size : 2 * size - shared]])
        hashes += [ngrams.mix64(a), ngrams.mix64(b)]
        counts += [size, size]
    exact = shared / (2 * size - shared)
    return ngrams.Ngrams(np.concatenate(hashes), np.concatenate([[0], np.cumsum(counts)]), None), exact


def test_minhash_rows_agree_with_probability_jaccard_and_independently():
    # P[min h(A) = min h(B)] = J for each row; independent rows make the estimate's variance J(1-J)/num_perm.
    rng = np.random.default_rng(0)
    sets, j = _set_pairs(300, 60, 0.5, rng)
    sig = dedup.signatures(sets, num_perm=128, seed=3)
    est = (sig[0::2] == sig[1::2]).mean(axis=1)  # [pairs]
    assert abs(est.mean() - j) < 4 * np.sqrt(j * (1 - j) / (128 * 300))
    assert np.std(est) == pytest.approx(np.sqrt(j * (1 - j) / 128), rel=0.2)


@pytest.mark.parametrize("jaccard", [0.1, 0.3])
def test_spark_style_10_hashes_10_bands_of_1_follow_the_lsh_curve(jaccard):
    # GPT-3 used Spark's MinHashLSH with 10 hashes: a pair is a candidate with probability 1 - (1 - J)^10.
    cfg = dedup.DedupConfig(num_perm=10, bands=10, rows=1)
    assert cfg.lsh_shape() == (10, 1)
    rng = np.random.default_rng(1)
    sets, j = _set_pairs(400, 40, jaccard, rng)
    sig = dedup.signatures(sets, cfg.num_perm, seed=7)
    pairs = {tuple(p) for p in dedup.candidate_pairs(sig, 10, 1).tolist()}
    hit = np.mean([(2 * i, 2 * i + 1) in pairs for i in range(400)])
    p = 1 - (1 - j) ** 10
    assert abs(hit - p) < 4 * np.sqrt(p * (1 - p) / 400), (hit, p)


def test_bands_and_rows_minimise_the_weighted_false_positive_and_negative_areas():
    # Brute force over every (b, r) with b*r <= num_perm, integrating the LSH curve with scipy's quad.
    def error(b, r, t):
        fp = scipy.integrate.quad(lambda s: 1 - (1 - s**r) ** b, 0, t)[0]
        fn = scipy.integrate.quad(lambda s: (1 - s**r) ** b, t, 1)[0]
        return 0.5 * fp + 0.5 * fn

    for t, k in ((0.5, 16), (0.8, 32)):
        best = min(((b, r) for b in range(1, k + 1) for r in range(1, k // b + 1)), key=lambda br: error(*br, t))
        assert dedup.lsh_params(t, k) == best
    assert dedup.lsh_params(0.8, 128) == (9, 13)  # what datasketch's MinHashLSH picks for the same settings


def test_exact_dedup_removes_every_exact_duplicate():
    texts = ["a b c", "x y", "a b c", "a b c ", "x y", "z"]
    clusters = dedup.exact_clusters(texts)
    assert sorted(clusters) == [[0, 2], [1, 4]]  # "a b c " differs by a space: exact means exact


@needs_corpora
def test_minhash_lsh_finds_the_near_duplicates_brute_force_jaccard_finds():
    # Fortunes (about 100 near-duplicate pairs) and Debian licence texts (repeated across packages).
    texts = _jsonl_texts(CORPORA / "debian_docs.jsonl.gz", 300) + _jsonl_texts(CORPORA / "fortunes.jsonl", 5000)
    cfg = dedup.DedupConfig(threshold=0.8, num_perm=128)
    shingles = ngrams.ngrams(ngrams.words(texts), cfg.ngram)
    truth, _ = dedup.brute_force_pairs(shingles, cfg.threshold)
    sig = dedup.signatures(shingles, cfg.num_perm, cfg.seed)
    found = dedup.candidate_pairs(sig, *cfg.lsh_shape(), valid=np.diff(shingles.offsets) > 0)
    t, f = set(map(tuple, truth.tolist())), set(map(tuple, found.tolist()))
    recall, precision = len(t & f) / len(t), len(t & f) / len(f)
    print(f"MinHash-LSH vs brute force: {len(t)} true pairs, recall {recall:.3f}, precision {precision:.3f}")
    assert len(t) > 300 and recall >= 0.95 and precision >= 0.8

    # The dedup clusters: every true pair LSH found ends in one cluster, and with verification no cluster
    # joins documents through a pair below the threshold (each member has a partner at J >= 0.8).
    result = dedup.cluster(shingles, cfg)
    root = {i: c[0] for c in result.clusters for i in c}
    assert all(root.get(i, i) == root.get(j, j) for i, j in t & f)
    sets = dedup.ShingleSets(shingles)
    for c in result.clusters:
        for i in c:
            assert max(sets.jaccard(i, k) for k in c if k != i) >= cfg.threshold


@needs_corpora
@pytest.mark.slow
def test_minhash_lsh_recall_on_the_full_fortunes_and_debian_docs():
    texts = _jsonl_texts(CORPORA / "debian_docs.jsonl.gz") + _jsonl_texts(CORPORA / "fortunes.jsonl")
    cfg = dedup.DedupConfig()
    shingles = ngrams.ngrams(ngrams.words(texts), cfg.ngram)
    truth, _ = dedup.brute_force_pairs(shingles, cfg.threshold)
    sig = dedup.signatures(shingles, cfg.num_perm, cfg.seed)
    found = dedup.candidate_pairs(sig, *cfg.lsh_shape(), valid=np.diff(shingles.offsets) > 0)
    t, f = set(map(tuple, truth.tolist())), set(map(tuple, found.tolist()))
    assert len(t & f) / len(t) >= 0.95


def test_shingles_are_word_ngrams_ignoring_case_and_punctuation():
    w = ngrams.words(["The cat, the HAT.", "the cat the hat", "café au lait", "x"])
    assert w.counts.tolist() == [4, 4, 3, 1]
    assert np.array_equal(w.hashes[:4], w.hashes[4:8])
    assert ngrams.word_list("Café-au-LAIT, 2x!") == ["café", "au", "lait", "2x"]
    # The str definition (used for character offsets) and the byte-level one agree word for word.
    text = "Ünïcode ÀB test — naïve 42 x_y"
    assert np.array_equal(ngrams.words([" ".join(ngrams.word_list(text))]).hashes, ngrams.words([text]).hashes)
    grams = ngrams.ngrams(w, 3, short="whole")
    assert np.diff(grams.offsets).tolist() == [2, 2, 1, 1]  # a document shorter than n keeps one shingle
    assert np.diff(ngrams.ngrams(w, 3, short="drop").offsets).tolist() == [2, 2, 1, 0]
