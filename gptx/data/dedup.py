"""Exact and fuzzy (MinHash-LSH) deduplication, as GPT-3 did to its Common Crawl (Brown et al. 2020, Sec. 2.2).

Fuzzy dedup: each document becomes the set of its word n-gram shingles (gptx.data.ngrams); MinHash turns a set
into `num_perm` minima of random hash functions, so that two signatures agree in one position with probability
equal to the sets' Jaccard similarity; LSH cuts the signature into `bands` of `rows` and calls two documents
candidates when any band is identical, which happens with probability 1 - (1 - J^rows)^bands. Clusters are the
connected components of the candidate pairs (optionally only those whose exact Jaccard similarity passes the
threshold), found with union-find, and one document per cluster, the smallest index, is kept. GPT-3 used
Spark's MinHashLSH with 10 hashes: `num_perm=10, bands=10, rows=1`.

The hash functions are h_i(x) = (a_i x + b_i) mod 2^32 with odd a_i over the upper 32 bits x of each shingle's
64-bit hash: affine bijections of 32-bit integers. The shingle hashes are already uniformly random, so the
argmin of any bijection over A ∪ B is a uniform element of A ∪ B, which is all MinHash needs for
P[min h(A) = min h(B)] = J; different (a_i, b_i) make the rows nearly independent (tests check both).
All documents are hashed at once: one [chunk, num_perm] broadcast multiply-add and a segmented minimum.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from gptx.data import ngrams

_CHUNK = 16384  # shingles per broadcast: [num_perm, 16384] uint32 is 8 MB at num_perm=128


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """config.data_prep.dedup: shingle size (words), MinHash size, Jaccard threshold, LSH shape (0: derived from
    the threshold, weighing missed pairs by `fn_weight` and false candidates by 1 - fn_weight), whether
    candidates are verified by exact Jaccard, and the hash seed."""

    exact: bool = True
    fuzzy: bool = True
    ngram: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    bands: int = 0
    rows: int = 0
    verify: bool = True
    seed: int = 1
    fn_weight: float = 0.8  # misses cost more than candidates: the Jaccard check removes false ones

    @classmethod
    def from_config(cls, c) -> DedupConfig:
        return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls)})

    def lsh_shape(self) -> tuple[int, int]:
        """(bands, rows): the configured ones, or the error-minimising pair for the threshold."""
        if self.bands and self.rows:
            if self.bands * self.rows > self.num_perm:
                raise ValueError(f"bands*rows={self.bands * self.rows} exceeds num_perm={self.num_perm}")
            return self.bands, self.rows
        return lsh_params(self.threshold, self.num_perm, 1.0 - self.fn_weight, self.fn_weight)


# --------------------------------------------------------------------------------------------------------------
# Exact duplicates


def text_key(text: str) -> bytes:
    """128-bit digest of a (normalised) text: equal texts, equal keys."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def exact_clusters(texts: Sequence[str]) -> list[list[int]]:
    """Groups (of size >= 2) of indices of identical texts, each in index order."""
    groups: dict[bytes, list[int]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(text_key(t), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


# --------------------------------------------------------------------------------------------------------------
# MinHash and LSH


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising the weighted area of false positives (candidate
    probability below the threshold) plus false negatives (miss probability above it), as datasketch does."""
    s = np.linspace(0.0, 1.0, 2001)
    best, best_err = (1, 1), np.inf
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1)[:, None]
        p = 1.0 - (1.0 - s[None, :] ** r) ** b  # [R, S] candidate probability at similarity s
        fp = np.trapezoid(np.where(s <= threshold, p, 0.0), s, axis=1)
        fn = np.trapezoid(np.where(s >= threshold, 1.0 - p, 0.0), s, axis=1)
        err = fp_weight * fp + fn_weight * fn
        i = int(np.argmin(err))
        if err[i] < best_err - 1e-12:
            best, best_err = (b, int(r[i, 0])), float(err[i])
    return best


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of the num_perm hash functions: a odd, both uint32 [num_perm]."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def signatures(shingles: ngrams.Ngrams, num_perm: int, seed: int = 1) -> np.ndarray:
    """MinHash signatures [D, num_perm] uint32; a document without shingles gets all 0xFFFFFFFF."""
    a, b = permutations(num_perm, seed)
    x = (shingles.hashes >> np.uint64(32)).astype(np.uint32)  # [S]
    doc = ngrams.segment_ids(shingles.offsets)
    n_docs = len(shingles.offsets) - 1
    # Permutation-major [num_perm, D]: the segmented minimum then runs along contiguous memory.
    sig = np.full((num_perm, n_docs), np.iinfo(np.uint32).max, np.uint32)
    buf = np.empty((num_perm, _CHUNK), np.uint32)
    for lo in range(0, len(x), _CHUNK):
        xs, ds = x[lo : lo + _CHUNK], doc[lo : lo + _CHUNK]
        h = buf[:, : len(xs)]
        np.multiply(a[:, None], xs[None, :], out=h)  # [num_perm, chunk], mod 2^32
        h += b[:, None]
        starts = np.flatnonzero(np.diff(ds, prepend=-1))  # each document's run within the chunk
        docs = ds[starts]
        sig[:, docs] = np.minimum(sig[:, docs], np.minimum.reduceat(h, starts, axis=1))  # a doc can span chunks
    return np.ascontiguousarray(sig.T)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[D, bands] uint64 hash of each band's rows (equal bands, equal keys; others collide with p ~ 2^-64)."""
    d = sig.shape[0]
    rows_u64 = sig[:, : bands * rows].astype(np.uint64).reshape(d, bands, rows)  # [D, bands, rows]
    key = np.zeros((d, bands), np.uint64)
    for r in range(rows):
        key = ngrams.mix64(key * np.uint64(0x9E3779B97F4A7C15) + rows_u64[:, :, r])
    return key


def buckets(sig: np.ndarray, bands: int, rows: int, valid: np.ndarray | None = None) -> list[np.ndarray]:
    """The LSH buckets with at least two documents: arrays of document indices (ascending), band by band."""
    return key_buckets(band_keys(sig, bands, rows), valid)


def key_buckets(keys: np.ndarray, valid: np.ndarray | None = None) -> list[np.ndarray]:
    """`buckets` from the band keys [D, bands] (`band_keys`) of the documents."""
    ids = np.arange(keys.shape[0]) if valid is None else np.flatnonzero(valid)
    out = []
    for band in range(keys.shape[1]):
        k = keys[ids, band]
        order = np.argsort(k, kind="stable")
        ks, members = k[order], ids[order]
        cut = np.flatnonzero(ks[1:] != ks[:-1]) + 1
        starts, ends = np.concatenate([[0], cut]), np.concatenate([cut, [len(ks)]])
        for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
            out.append(np.sort(members[s:e]))
    return out


def candidate_pairs(sig: np.ndarray, bands: int, rows: int, valid: np.ndarray | None = None) -> np.ndarray:
    """All pairs (i < j) that share an LSH bucket in some band: [P, 2] int64, sorted and unique."""
    d = sig.shape[0]
    codes = []
    for group in buckets(sig, bands, rows, valid):
        i, j = np.triu_indices(len(group), 1)
        codes.append(group[i] * d + group[j])
    if not codes:
        return np.zeros((0, 2), np.int64)
    code = np.unique(np.concatenate(codes))
    return np.stack([code // d, code % d], axis=1)


# --------------------------------------------------------------------------------------------------------------
# Clusters


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving; the root of a set is its smallest member."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return [g for g in out.values() if len(g) > 1]


def shingle_set(hashes: np.ndarray) -> np.ndarray:
    """The sorted unique shingle hashes of one document."""
    a = np.sort(hashes)
    return a[np.concatenate([[True], a[1:] != a[:-1]])] if len(a) else a


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique shingle sets (0 when either is empty)."""
    if len(a) > len(b):
        a, b = b, a
    if not len(a):
        return 0.0
    at = np.minimum(np.searchsorted(b, a), len(b) - 1)  # both sorted: look the smaller set up in the larger
    inter = int(np.count_nonzero(b[at] == a))
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


class ShingleSets:
    """Sorted unique shingles of each document, computed on first use (for exact Jaccard checks)."""

    def __init__(self, shingles: ngrams.Ngrams):
        self.s = shingles
        self.cache: dict[int, np.ndarray] = {}

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self.cache:
            self.cache[i] = shingle_set(self.s.hashes[self.s.offsets[i] : self.s.offsets[i + 1]])
        return self.cache[i]

    def jaccard(self, i: int, j: int) -> float:
        return jaccard(self[i], self[j])

    def prefetch(self, ids: np.ndarray) -> None:
        """Readies the sets of documents `ids` that are about to be compared (a no-op here: shingles are held)."""


@dataclasses.dataclass
class FuzzyResult:
    """Clusters of near-duplicates (lists of indices, smallest first: the one kept) and LSH statistics."""

    clusters: list[list[int]]
    bands: int
    rows: int
    checked: int = 0  # candidate pairs whose Jaccard was computed
    rejected: int = 0  # of those, below the threshold (LSH false positives)

    def keep_mask(self, n: int) -> np.ndarray:
        keep = np.ones(n, bool)
        for c in self.clusters:
            keep[c[1:]] = False
        return keep


_CACHED_SETS = 4096  # shingle sets `TextShingleSets` keeps


class TextShingleSets(ShingleSets):
    """Shingle sets computed from the texts on first use (a bounded cache): the corpus is held as band keys."""

    def __init__(self, texts: Sequence[str], ngram: int):
        self.texts, self.ngram = texts, ngram
        self.cache = {}

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self.cache:
            self.prefetch(np.asarray([i]))
        return self.cache[i]

    def prefetch(self, ids: np.ndarray) -> None:
        """Computes the sets of documents `ids` in one batched pass (the cache is cleared first when they would
        overflow it: recomputing a set is cheaper than holding them all)."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        ids = [i for i in wanted if i not in self.cache]
        if len(self.cache) + len(ids) > _CACHED_SETS:
            self.cache.clear()
            ids = wanted
        shingles = ngrams.ngrams(ngrams.words([self.texts[i] for i in ids]), self.ngram, short="whole")
        for k, i in enumerate(ids):
            self.cache[i] = shingle_set(shingles.hashes[shingles.offsets[k] : shingles.offsets[k + 1]])


def near_duplicates(texts: Sequence[str], cfg: DedupConfig) -> FuzzyResult:
    """MinHash-LSH clusters of `texts` (see the module docstring), hashed ~1 MB at a time: the whole corpus is
    held as LSH band keys [D, bands] uint64, and shingle sets only of the documents that meet in a bucket."""
    bands, rows = cfg.lsh_shape()
    keys, valid = [np.zeros((0, bands), np.uint64)], [np.zeros(0, bool)]
    for batch in ngrams.batches(texts):
        shingles = ngrams.ngrams(ngrams.words(batch), cfg.ngram, short="whole")
        keys.append(band_keys(signatures(shingles, cfg.num_perm, cfg.seed), bands, rows))
        valid.append(np.diff(shingles.offsets) > 0)
    return cluster_keys(np.concatenate(keys), np.concatenate(valid), TextShingleSets(texts, cfg.ngram), cfg)


def cluster(shingles: ngrams.Ngrams, cfg: DedupConfig) -> FuzzyResult:
    """`cluster_keys` of precomputed shingles."""
    keys = band_keys(signatures(shingles, cfg.num_perm, cfg.seed), *cfg.lsh_shape())
    return cluster_keys(keys, np.diff(shingles.offsets) > 0, ShingleSets(shingles), cfg)


def cluster_keys(keys: np.ndarray, valid: np.ndarray, sets: ShingleSets, cfg: DedupConfig) -> FuzzyResult:
    """Clusters of near-duplicates: the connected components of the graph whose edges are the LSH candidate
    pairs (with `verify`, only those whose shingle sets have Jaccard >= threshold).

    `valid` marks the documents with words (the others would all share the empty signature). The answer does not
    depend on the order in which pairs are met, so the distributed runner (gptx.data.beam), which builds the
    same graph, finds the same clusters. A pair whose documents are already in one cluster is not checked (its
    edge would change nothing), nor is a pair checked twice, so most repeated bucket hits across bands cost
    nothing.
    """
    bands, rows = cfg.lsh_shape()
    uf = UnionFind(keys.shape[0])
    result = FuzzyResult([], bands, rows)
    rejected: set[tuple[int, int]] = set()
    groups = key_buckets(keys, valid)
    start = 0
    for g, group in enumerate(groups):
        if cfg.verify and g == start:  # the sets of the next buckets' members, up to the cache's size, at once
            start, members = _members_upto(groups, g, _CACHED_SETS)
            sets.prefetch(members)
        members = group.tolist()
        if not cfg.verify:
            for j in members[1:]:
                uf.union(members[0], j)
            continue
        for k, x in enumerate(members):
            for y in members[k + 1 :]:
                if (x, y) in rejected or uf.find(x) == uf.find(y):
                    continue
                result.checked += 1
                if sets.jaccard(x, y) >= cfg.threshold:
                    uf.union(x, y)
                else:
                    result.rejected += 1
                    rejected.add((x, y))
    result.clusters = uf.groups()
    return result


def _members_upto(groups: list[np.ndarray], first: int, limit: int) -> tuple[int, np.ndarray]:
    """(index after the last bucket taken, their distinct members) of buckets first, first + 1, ... whose members
    number at most `limit` (at least one bucket)."""
    end, total = first + 1, len(groups[first])
    while end < len(groups) and total + len(groups[end]) <= limit:
        total += len(groups[end])
        end += 1
    return end, np.unique(np.concatenate(groups[first:end]))


def brute_force_pairs(shingles: ngrams.Ngrams, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of documents with Jaccard >= threshold, by exact set intersection of all pairs
    (sparse document x shingle product): ([P, 2] pairs, [P] similarities). The reference for tests."""
    import scipy.sparse as sp

    d = len(shingles.offsets) - 1
    doc = ngrams.segment_ids(shingles.offsets)
    _, col = np.unique(shingles.hashes, return_inverse=True)
    x = sp.csr_matrix((np.ones(len(col), np.float32), (doc, col)), shape=(d, int(col.max(initial=-1)) + 1))
    x.data[:] = 1.0  # duplicate shingles within a document collapse to set membership
    x.sum_duplicates()
    x.data[:] = 1.0
    size = np.asarray(x.sum(axis=1)).ravel()
    inter = sp.triu(x @ x.T, k=1).tocoo()
    union = size[inter.row] + size[inter.col] - inter.data
    jac = inter.data / np.maximum(union, 1)
    keep = jac >= threshold
    pairs = np.stack([inter.row[keep], inter.col[keep]], axis=1).astype(np.int64)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], jac[keep][order]
