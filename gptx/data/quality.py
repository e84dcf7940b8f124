"""GPT-3's document quality classifier and its Pareto keep rule (Brown et al. 2020, Appendix A).

GPT-3 trained a logistic regression on hashed word features to tell curated text (WebText, Wikipedia, books:
positives) from raw Common Crawl (negatives), then kept a raw document iff

    np.random.pareto(alpha) > 1 - document_score,     alpha = 9,

so mostly high-scoring documents survive but some low-scoring ones do too. numpy's `pareto` is the Lomax
distribution, P(X > x) = (1 + x)^-alpha for x >= 0, so a document of score s is kept with probability
(2 - s)^-alpha: 1 at s = 1, 2^-9 ~ 0.002 at s = 0.

Features are unigram and bigram counts of the shared word definition (gptx.data.ngrams) hashed into 2^hash_bits
buckets, log(1 + count) and L2-normalised per document. The classifier is fitted by Newton-CG on the
class-balanced logistic loss with an L2 penalty. The Pareto draws come from a counter-based generator: the uniform
behind document d is a hash of (seed, text of d), so a run is reproducible, independent of document
order and of how the work is split, and the same function runs as a grain transform.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import grain
import numpy as np
import scipy.optimize
import scipy.sparse as sp

from gptx.data import ngrams


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """config.data_prep.quality."""

    enabled: bool = True
    hash_bits: int = 20
    l2: float = 1e-5
    max_iter: int = 50
    heldout_fraction: float = 0.2
    pareto_alpha: float = 9.0
    seed: int = 0
    max_train_docs: int = 50_000  # per class; 0: all
    max_train_bytes: int = 50_000_000  # per class; 0: no limit

    @classmethod
    def from_config(cls, c) -> QualityConfig:
        return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls)})


def features(texts: Sequence[str], hash_bits: int) -> sp.csr_matrix:
    """[D, 2^hash_bits] float32 sparse rows: hashed unigram + bigram counts, log1p, L2-normalised. Built ~1 MB of
    text at a time (each row depends on its document alone), so the temporaries do not grow with the input."""
    parts = [_features(b, hash_bits) for b in ngrams.batches(texts)]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return sp.csr_matrix((0, 1 << hash_bits), dtype=np.float32)
    return sp.vstack(parts, format="csr")


def _features(texts: Sequence[str], hash_bits: int) -> sp.csr_matrix:
    w = ngrams.words(texts)
    bi = ngrams.ngrams(w, 2, short="drop")
    mask = np.uint64((1 << hash_bits) - 1)
    cols = np.concatenate([w.hashes & mask, ngrams.mix64(bi.hashes ^ np.uint64(0xB16A4D)) & mask]).astype(np.int64)
    rows = np.concatenate([ngrams.segment_ids(w.offsets), ngrams.segment_ids(bi.offsets)])
    x = sp.csr_matrix(
        (np.ones(len(cols), np.float32), (rows, cols)), shape=(len(texts), 1 << hash_bits), dtype=np.float32
    )
    x.sum_duplicates()
    x.data = np.log1p(x.data)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ x)


@dataclasses.dataclass
class QualityModel:
    """Logistic regression over hashed features: score = sigmoid(x . weights + bias) = P(curated)."""

    weights: np.ndarray  # [2^hash_bits] float32
    bias: float
    hash_bits: int

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """[D] probability that each text is curated-like."""
        parts = [_sigmoid(features(b, self.hash_bits) @ self.weights + self.bias) for b in ngrams.batches(texts)]
        return np.concatenate([np.zeros(0), *parts])  # ~1 MB of text at a time: memory stays bounded

    def save(self, path: str) -> None:
        np.savez_compressed(path, weights=self.weights, bias=self.bias, hash_bits=self.hash_bits)

    @classmethod
    def load(cls, path: str) -> QualityModel:
        z = np.load(path)
        return cls(z["weights"], float(z["bias"]), int(z["hash_bits"]))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


def fit(x: sp.csr_matrix, y: np.ndarray, l2: float, max_iter: int) -> tuple[np.ndarray, float]:
    """Weights [x.shape[1]] and bias minimising the class-balanced mean log loss + l2/2 |w|^2 (Newton-CG).

    Only buckets that occur in `x` are optimised: the others have zero gradient from the data, so their
    weight stays at its initial 0 under the L2 penalty; solving for the active ones only is the same solution.
    """
    y = y.astype(np.float64)
    n_pos = max(y.sum(), 1.0)
    n_neg = max(len(y) - y.sum(), 1.0)
    sw = np.where(y > 0, 0.5 / n_pos, 0.5 / n_neg)  # each class weighs one half
    active = np.unique(x.indices)
    xa = x[:, active].tocsr()
    xt = xa.T.tocsr()
    d = len(active)

    def loss_grad(theta):
        w, b = theta[:d], theta[d]
        z = xa @ w + b
        # log(1 + e^z) - y z, stably
        loss = float(sw @ (np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * float(w @ w)
        r = sw * (_sigmoid(z) - y)
        return loss, np.concatenate([xt @ r + l2 * w, [r.sum()]])

    def hess_vec(theta, v):
        # H v = X^T diag(sw p (1 - p)) X v + l2 v (no penalty on the bias): two sparse products
        p = _sigmoid(xa @ theta[:d] + theta[d])
        t = sw * p * (1.0 - p) * (xa @ v[:d] + v[d])
        return np.concatenate([xt @ t + l2 * v[:d], [t.sum()]])

    # Newton-CG: ~10 Newton steps on this convex loss, each a few Hessian-vector products; far fewer passes
    # over the data than L-BFGS with a million weights.
    res = scipy.optimize.minimize(
        loss_grad, np.zeros(d + 1), jac=True, hessp=hess_vec, method="Newton-CG", options={"maxiter": max_iter}
    )
    weights = np.zeros(x.shape[1], np.float32)
    weights[active] = res.x[:d]
    return weights, float(res.x[d])


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties counted 1/2
    (Mann-Whitney U from average ranks)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train(positives: Sequence[str], negatives: Sequence[str], cfg: QualityConfig) -> tuple[QualityModel, dict]:
    """Fits the classifier on curated (`positives`) vs raw (`negatives`) texts.

    A seeded `heldout_fraction` of each class is kept out of the fit; the returned metrics (accuracy at 0.5 and
    AUC on that held-out split, and the class sizes) go into the prepare report.
    """
    if not len(positives) or not len(negatives):
        raise ValueError("the quality classifier needs curated and raw documents (sources with role curated/raw)")
    texts = list(positives) + list(negatives)
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    rng = np.random.default_rng(cfg.seed)
    held = np.zeros(len(texts), bool)
    for cls_idx in (np.flatnonzero(y == 1), np.flatnonzero(y == 0)):
        n_held = int(round(len(cls_idx) * cfg.heldout_fraction))
        held[rng.choice(cls_idx, n_held, replace=False)] = True
    x = features(texts, cfg.hash_bits)
    w, b = fit(x[~held], y[~held], cfg.l2, cfg.max_iter)
    model = QualityModel(w, b, cfg.hash_bits)
    metrics = {"train_positives": int((y[~held] == 1).sum()), "train_negatives": int((y[~held] == 0).sum())}
    if held.any():
        s = _sigmoid(x[held] @ w + b)
        metrics.update(
            heldout=int(held.sum()),
            heldout_accuracy=float(np.mean((s > 0.5) == (y[held] == 1))),
            heldout_auc=auc(s, y[held] == 1),
        )
    return model, metrics


def uniforms(texts: Sequence[str], seed: int) -> np.ndarray:
    """[D] uniforms in (0, 1), each a hash of (seed, text): the counter-based generator of the keep rule."""
    salt = seed.to_bytes(8, "little", signed=True)
    raw = b"".join(
        hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8, salt=salt).digest() for t in texts
    )
    bits = np.frombuffer(raw, np.uint64) >> np.uint64(11)  # 53 random bits
    return (bits.astype(np.float64) + 0.5) / float(1 << 53)


def sample_keys(texts: Sequence[str], seed: int) -> np.ndarray:
    """[D] uniforms that choose the classifier's training sample: the `max_train_docs` smallest of a class are
    taken. A hash of each text (salted apart from the Pareto draws), so any runner picks the same sample."""
    return uniforms(texts, seed + 0x5A3D1E)


def training_sample(keys: np.ndarray, sizes: np.ndarray, max_docs: int, max_bytes: int) -> np.ndarray:
    """Positions (ascending) of the documents with the smallest keys (ties to the earlier position), taken in key
    order while fewer than `max_docs` are taken and their `sizes` sum to less than `max_bytes` (0: no limit)."""
    order = np.lexsort((np.arange(len(keys)), keys))
    if max_docs:
        order = order[:max_docs]
    if max_bytes:
        before = np.cumsum(np.asarray(sizes, np.int64)[order]) - np.asarray(sizes, np.int64)[order]
        order = order[before < max_bytes]
    return np.sort(order)


def pareto_draws(texts: Sequence[str], alpha: float, seed: int) -> np.ndarray:
    """[D] Lomax(alpha) variates (numpy's `pareto`) by inversion: X = (1 - U)^(-1/alpha) - 1."""
    return (1.0 - uniforms(texts, seed)) ** (-1.0 / alpha) - 1.0


def pareto_keep(texts: Sequence[str], scores: np.ndarray, alpha: float, seed: int) -> np.ndarray:
    """[D] bool: GPT-3's rule, keep iff pareto(alpha) > 1 - score."""
    return pareto_draws(texts, alpha, seed) > 1.0 - np.asarray(scores)


class ParetoFilter(grain.transforms.Filter):
    """Keeps a record {"text", ...} by GPT-3's rule with a trained model, as a grain transform."""

    def __init__(self, model: QualityModel, alpha: float = 9.0, seed: int = 0):
        self.model, self.alpha, self.seed = model, alpha, seed

    def filter(self, record: dict) -> bool:
        text = [record["text"]]
        return bool(pareto_keep(text, self.model.score(text), self.alpha, self.seed)[0])
