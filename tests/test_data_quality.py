"""GPT-3's quality classifier and Pareto keep rule (Brown et al. 2020, Appendix A)."""

import csv
import gzip
import itertools
import json
import lzma

import numpy as np
import pytest
import scipy.stats
from conftest import SHARED_DATA

from gptx.data import quality, sources

CORPORA = SHARED_DATA / "corpora"


@pytest.mark.parametrize("score", [0.0, 0.5, 0.9, 1.0])
def test_pareto_rule_keeps_a_document_with_probability_2_minus_s_to_the_minus_alpha(score):
    # numpy's pareto(a) is Lomax: P(X > x) = (1 + x)^-a, so P(X > 1 - s) = (2 - s)^-a; alpha = 9 as in GPT-3.
    n, alpha = 40_000, 9.0
    texts = [f"document number {i}" for i in range(n)]
    kept = quality.pareto_keep(texts, np.full(n, score), alpha, seed=0).mean()
    p = (2.0 - score) ** -alpha
    assert abs(kept - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12, (kept, p)


def test_pareto_draws_are_numpys_lomax_and_reproducible():
    texts = [f"doc {i}" for i in range(20_000)]
    draws = quality.pareto_draws(texts, 9.0, seed=1)
    reference = np.random.default_rng(0).pareto(9.0, 20_000)
    assert scipy.stats.ks_2samp(draws, reference).pvalue > 0.01
    np.testing.assert_array_equal(draws, quality.pareto_draws(texts, 9.0, seed=1))  # seeded: same run, same draws
    np.testing.assert_array_equal(draws[::-1], quality.pareto_draws(texts[::-1], 9.0, seed=1))  # order-free
    assert not np.array_equal(draws, quality.pareto_draws(texts, 9.0, seed=2))


def test_auc_is_the_probability_a_positive_outscores_a_negative():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg)])
    assert quality.auc(scores, labels) == pytest.approx(brute)


def _tsv_column(path, column, opener, limit):
    with opener(path, "rt", encoding="utf-8") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [r[column] for r in itertools.islice(rows, limit)]


@pytest.mark.skipif(not (CORPORA / "debian_docs.jsonl.gz").exists(), reason=f"shared corpora not found in {CORPORA}")
def test_classifier_separates_curated_text_from_debian_docs_on_held_out_documents():
    rng = np.random.default_rng(0)
    shakespeare = sources.read_documents("bundled:tinyshakespeare")
    curated = (
        [shakespeare[i] for i in rng.choice(len(shakespeare), 400, replace=False)]
        + _tsv_column(CORPORA / "kjv_bible_verses.tsv.gz", "text", gzip.open, 400)
        + _tsv_column(CORPORA / "wordnet_glosses.tsv.xz", "gloss", lzma.open, 400)
    )
    with gzip.open(CORPORA / "debian_docs.jsonl.gz", "rt", encoding="utf-8") as f:
        raw = [json.loads(line)["text"] for line in itertools.islice(f, 600)]
    cfg = quality.QualityConfig(hash_bits=18, heldout_fraction=0.3, seed=0)
    model, metrics = quality.train(curated, raw, cfg)
    print(metrics)
    assert metrics["heldout"] > 500 and metrics["heldout_auc"] >= 0.95 and metrics["heldout_accuracy"] > 0.9
    # The saved model scores the same.
    scores = model.score(curated[:5] + raw[:5])
    assert (scores[:5] > 0.5).all() and (scores[5:] < 0.5).all()


def test_model_round_trips_and_filter_runs_as_a_grain_transform(tmp_path):
    import grain

    good = [f"the quick brown fox {w} jumps over the lazy dog" for w in ("runs", "sleeps", "eats", "sings")] * 5
    bad = [f"Copyright {y} Foo Inc. GPL-{y % 3} license {y}" for y in range(1990, 2010)]
    model, _ = quality.train(good, bad, quality.QualityConfig(hash_bits=12, heldout_fraction=0.0))
    model.save(str(tmp_path / "q.npz"))
    loaded = quality.QualityModel.load(str(tmp_path / "q.npz"))
    np.testing.assert_allclose(loaded.score(good + bad), model.score(good + bad))
    records = [{"id": str(i), "source": "x", "text": t} for i, t in enumerate(good + bad)]
    ds = grain.MapDataset.source(records).filter(quality.ParetoFilter(loaded, 9.0, seed=0))
    kept = [r["text"] for r in ds]
    texts = [r["text"] for r in records]
    expect = quality.pareto_keep(texts, model.score(texts), 9.0, 0)
    assert kept == [t for t, k in zip(texts, expect, strict=True) if k]


def test_the_training_sample_takes_the_smallest_keys_up_to_a_count_and_a_size():
    keys = np.array([0.5, 0.1, 0.9, 0.1, 0.3])
    sizes = np.array([10, 20, 30, 40, 50])
    assert quality.training_sample(keys, sizes, 0, 0).tolist() == [0, 1, 2, 3, 4]
    assert quality.training_sample(keys, sizes, 3, 0).tolist() == [1, 3, 4]  # 0.1 (pos 1), 0.1 (pos 3), 0.3
    # In key order 20, 40, 50, ... bytes: a document is taken while those before it sum to less than the limit.
    assert quality.training_sample(keys, sizes, 0, 60).tolist() == [1, 3]
    assert quality.training_sample(keys, sizes, 0, 61).tolist() == [1, 3, 4]
    assert quality.training_sample(keys, sizes, 2, 1000).tolist() == [1, 3]
