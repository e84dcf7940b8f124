"""Weighted mixing of sources, as in GPT-3's training mix (Brown et al. 2020, Table 2.2).

GPT-3 sampled its datasets by a chosen weight rather than by size, so small high-quality sets were seen 2-3
times in training and Common Crawl less than once. `mix` does the same offline: source i gets a share
w_i / sum(w) of `total_bytes` (default: the bytes of all sources together), filled by whole passes over a
seeded shuffle of its documents plus a partial pass; its `epochs` is the bytes it contributes over its size.
The mixed documents are shuffled together with the same seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def _bytes(r: dict) -> int:
    return len(r["text"].encode("utf-8", "surrogatepass"))


def hold_out_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) positions of one source's n records: a seeded `fraction` (at least one when fraction > 0
    and n >= 2) held out, both ascending."""
    n_val = int(round(n * fraction))
    if fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    order = np.random.default_rng(seed).permutation(n)
    val = set(order[:n_val].tolist())
    return [i for i in range(n) if i not in val], sorted(val)


def hold_out(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): a seeded `fraction` of one source's records, at least one when fraction > 0 and there are
    two or more, held out before mixing so repeated sources never leak into validation."""
    train, val = hold_out_indices(len(records), fraction, seed)
    return [records[i] for i in train], [records[i] for i in val]


def plan(
    sizes: dict[str, list[int]], weights: dict[str, float], total_bytes: int, seed: int, max_epochs: float = 0.0
) -> tuple[list[tuple[str, int, int]], list[dict]]:
    """The mix from the byte sizes of each source's records alone (see `mix`): (the picks (source, position,
    epoch) in mixed order, one report row per source). Only sizes are needed, so a distributed runner plans on
    them and joins the documents afterwards."""
    totals = {s: sum(b) for s, b in sizes.items()}
    live = {s: w for s, w in weights.items() if w > 0 and totals.get(s)}
    total = total_bytes or sum(totals[s] for s in live)
    norm = sum(live.values())
    picks: list[tuple[str, int, int]] = []
    rows = []
    for k, (name, size) in enumerate(sizes.items()):
        w = live.get(name, 0.0)
        target = total * w / norm if w else 0.0
        if max_epochs > 0:
            target = min(target, max_epochs * totals[name])
        order = np.random.default_rng([seed, k]).permutation(len(size))
        taken, got, epoch = 0, 0, 0
        while got < target:
            for i in order.tolist():
                if got >= target:
                    break
                picks.append((name, i, epoch))
                taken += 1
                got += size[i]
            epoch += 1
        rows.append(
            {
                "source": name,
                "weight": float(weights.get(name, 0.0)),
                "share": w / norm if w else 0.0,
                "docs_available": len(size),
                "bytes_available": totals[name],
                "docs_out": taken,
                "bytes_out": got,
                "epochs": got / totals[name] if totals[name] else 0.0,
            }
        )
    perm = np.random.default_rng([seed, len(sizes)]).permutation(len(picks))
    return [picks[i] for i in perm.tolist()], rows


def mix(
    by_source: dict[str, list[dict]],
    weights: dict[str, float],
    total_bytes: int,
    seed: int,
    max_epochs: float = 0.0,
) -> tuple[list[dict], list[dict]]:
    """(mixed records, one report row per source) for sources sampled by weight.

    Args:
      by_source: each source's records {"id", "source", "text"}, in config order.
      weights: mixing weight per source (>= 0; 0 leaves a source out).
      total_bytes: size of the mix in UTF-8 bytes; 0 = the bytes of all sources with a weight.
      seed: seeds the per-source shuffles and the final shuffle.
      max_epochs: > 0 caps the passes over any one source (a small source then falls short of its share
        instead of being repeated many times); 0 = no cap.
    """
    sizes = {s: [_bytes(r) for r in rs] for s, rs in by_source.items()}
    picks, rows = plan(sizes, weights, total_bytes, seed, max_epochs)
    return [with_epoch(by_source[s][i], e) for s, i, e in picks], rows


def with_epoch(r: dict, epoch: int) -> dict:
    """A record as taken in pass `epoch` over its source: repeats get the id "ID#epochE"."""
    return r if epoch == 0 else {**r, "id": f"{r['id']}#epoch{epoch}"}


def stream(
    recs: Iterable[dict],
    sources: list[str],
    weights: dict[str, float],
    settings: tuple[float, int, int, float],
    report: dict,
    bucket_bytes: int = 4 << 20,
) -> Iterator[tuple[int, int, dict]]:
    """(bucket, output position, record with "split") triples of the mixed train records followed by each
    source's held-out records, the same as `hold_out` then `mix` over the records grouped by source, from records
    that can be iterated twice: a pass for the sizes, then one that places each record. Buckets are consecutive
    runs of output positions of ~`bucket_bytes` of text (`stage_io.reorder` puts the records in order through
    them). Fills `report` with the rows.

    settings: (val_fraction, total_bytes, seed, max_epochs).
    """
    fraction, total_bytes, seed, max_epochs = settings
    sizes: dict[str, list[int]] = {s: [] for s in sources}
    for r in recs:
        sizes[r["source"]].append(_bytes(r))
    split, train_sizes, val_at = {}, {}, {}
    for k, (name, size) in enumerate(sizes.items()):
        train, val = hold_out_indices(len(size), fraction, seed + k)
        split[name] = np.full(len(size), -1, np.int64)
        split[name][train] = np.arange(len(train))
        train_sizes[name] = [size[i] for i in train]
        val_at[name] = dict(zip(val, range(len(val)), strict=True))
    picks, rows = plan(train_sizes, weights, total_bytes, seed, max_epochs)
    where = _pick_index(picks, sources)
    n_train, n_val = len(picks), sum(len(v) for v in val_at.values())
    val_start, at = {}, n_train
    for name in sources:
        val_start[name], at = at, at + len(val_at[name])
    out_sizes = [train_sizes[s][i] for s, i, _ in picks]
    for name in sources:
        out_sizes += [sizes[name][j] for j in sorted(val_at[name])]
    bucket = np.cumsum(np.asarray(out_sizes, np.int64)) // bucket_bytes
    del picks, out_sizes, train_sizes, sizes
    seen = dict.fromkeys(sources, 0)
    for r in recs:
        name = r["source"]
        j, seen[name] = seen[name], seen[name] + 1
        t = int(split[name][j])
        if t < 0:
            p = val_start[name] + val_at[name][j]
            yield int(bucket[p]), p, {**r, "split": "val"}
            continue
        order, positions, epochs = where[name]
        for m in range(np.searchsorted(order, t, "left"), np.searchsorted(order, t, "right")):
            p = int(positions[m])
            yield int(bucket[p]), p, {**with_epoch(r, int(epochs[m])), "split": "train"}
    report.update({"sources": rows, "val_docs": n_val})


def _pick_index(picks: list[tuple[str, int, int]], sources: list[str]) -> dict[str, tuple[np.ndarray, ...]]:
    """Per source: (train positions sorted, the output positions of those picks, their epochs)."""
    out = {}
    for name in sources:
        rows = np.array([(i, p, e) for p, (s, i, e) in enumerate(picks) if s == name], np.int64).reshape(-1, 3)
        order = np.argsort(rows[:, 0], kind="stable")
        out[name] = (rows[order, 0], rows[order, 1], rows[order, 2])
    return out
