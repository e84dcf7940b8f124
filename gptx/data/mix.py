"""Weighted mixing of sources, as in GPT-3's training mix (Brown et al. 2020, Table 2.2).

GPT-3 sampled its datasets by a chosen weight rather than by size, so small high-quality sets were seen 2-3
times in training and Common Crawl less than once. `mix` does the same offline: source i gets a share
w_i / sum(w) of `total_bytes` (default: the bytes of all sources together), filled by whole passes over a
seeded shuffle of its documents plus a partial pass; its `epochs` is the bytes it contributes over its size.
The mixed documents are shuffled together with the same seed.
"""

from __future__ import annotations

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
