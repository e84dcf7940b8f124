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


def hold_out(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): a seeded `fraction` of one source's records, at least one when fraction > 0 and there are
    two or more, held out before mixing so repeated sources never leak into validation."""
    n_val = int(round(len(records) * fraction))
    if fraction > 0 and n_val == 0 and len(records) > 1:
        n_val = 1
    order = np.random.default_rng(seed).permutation(len(records))
    val = set(order[:n_val].tolist())
    return [r for i, r in enumerate(records) if i not in val], [records[i] for i in sorted(val)]


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
    sizes = {s: sum(map(_bytes, rs)) for s, rs in by_source.items()}
    live = {s: w for s, w in weights.items() if w > 0 and sizes.get(s)}
    total = total_bytes or sum(sizes[s] for s in live)
    norm = sum(live.values())
    mixed: list[dict] = []
    rows = []
    for k, (name, records) in enumerate(by_source.items()):
        w = live.get(name, 0.0)
        target = total * w / norm if w else 0.0
        if max_epochs > 0:
            target = min(target, max_epochs * sizes[name])
        order = np.random.default_rng([seed, k]).permutation(len(records))
        taken, got, epoch = [], 0, 0
        while got < target:
            for i in order:
                if got >= target:
                    break
                r = records[i]
                taken.append(r if epoch == 0 else {**r, "id": f"{r['id']}#epoch{epoch}"})
                got += _bytes(r)
            epoch += 1
        mixed.extend(taken)
        rows.append(
            {
                "source": name,
                "weight": float(weights.get(name, 0.0)),
                "share": w / norm if w else 0.0,
                "docs_available": len(records),
                "bytes_available": sizes[name],
                "docs_out": len(taken),
                "bytes_out": got,
                "epochs": got / sizes[name] if sizes[name] else 0.0,
            }
        )
    perm = np.random.default_rng([seed, len(by_source)]).permutation(len(mixed))
    return [mixed[i] for i in perm], rows
