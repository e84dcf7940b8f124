"""Connected components of a graph held as a Beam PCollection of edges, in a bounded number of rounds.

Large-star / small-star (Kiveris et al. 2014, "Connected Components in MapReduce and Beyond"): nodes are
comparable ids, and each round rewires edges towards smaller nodes without changing the components.

  large-star: every node u links each strictly larger neighbour to m(u), the smallest of u and its neighbours;
  small-star: every node u links itself and each of its smaller neighbours to m'(u), the smallest of those.

Both keep the components and, alternated, turn each one into a star around its smallest node in O(log^2 n)
rounds (O(log n) in practice), where naive label propagation needs as many rounds as the longest path. A Beam
pipeline is a fixed graph, so `rounds` rounds are unrolled; whatever has not yet become a star after them (in
practice nothing) is finished exactly by union-find on one worker (`finish`), so the answer never depends on
the number of rounds, only its cost does. The result: (node, root) for every node but the roots, root being
the smallest node of its component.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam

from gptx.data import dedup

METRICS = "gptx.prepare.components"  # the counter "open_edges": edges left to union-find after the rounds


def _both_ways(edge: tuple) -> Iterator[tuple]:
    u, v = edge
    yield u, v
    yield v, u


def large_star(item: tuple) -> Iterator[tuple]:
    """(u, neighbours) -> the edges (v, m(u)) for each neighbour v > u."""
    u, nbrs = item
    nbrs = set(nbrs)
    m = min(nbrs | {u})
    for v in nbrs:
        if v > u and v != m:
            yield v, m


def small_star(item: tuple) -> Iterator[tuple]:
    """(u, neighbours) -> the edges (v, m) for u and each neighbour v < u, m the smallest of those."""
    u, nbrs = item
    small = {v for v in nbrs if v < u} | {u}
    m = min(small)
    for v in small:
        if v != m:
            yield v, m


def _canonical(edge: tuple) -> tuple:
    u, v = edge
    return (u, v) if u < v else (v, u)


class _Round(beam.PTransform):
    """One large-star or small-star step over edges (a, b), a < b; returns the new distinct edges."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def expand(self, edges):
        return (
            edges
            | "Both" >> beam.FlatMap(_both_ways)
            | "Adjacent" >> beam.GroupByKey()
            | "Star" >> beam.FlatMap(self.step)
            | "Canonical" >> beam.Map(_canonical)
            | "Distinct" >> beam.Distinct()
        )


def _leaf_edges(item: tuple) -> Iterator[tuple]:
    """(u, neighbours) after the rounds -> for each smaller neighbour v: ("star", (v, u)) when v is u's only
    neighbour (u hangs off hub v), else ("open", (v, u)); each edge is decided once, at its larger end."""
    u, nbrs = item
    nbrs = set(nbrs)
    for v in nbrs:
        if v < u:
            yield ("star", (v, u)) if len(nbrs) == 1 else ("open", (v, u))


def _hub_check(item: tuple) -> Iterator[tuple]:
    """(hub, [leaves tagged "star"], [whether the hub has a smaller neighbour]) -> star edges stay stars only
    around a hub with no smaller neighbour; the others go to union-find with the rest."""
    hub, (leaves, smaller) = item
    for leaf in leaves:
        yield ("open", (hub, leaf)) if any(smaller) else ("star", (leaf, hub))


def finish(open_edges: Iterable[tuple]) -> dict:
    """Union-find over the edges that are not yet stars: {node: root} for every node of those components."""
    edges = list(open_edges)
    beam.metrics.Metrics.counter(METRICS, "open_edges").inc(len(edges))
    nodes = sorted({x for e in edges for x in e})
    index = {x: i for i, x in enumerate(nodes)}
    uf = dedup.UnionFind(len(nodes))
    for u, v in edges:
        uf.union(index[u], index[v])
    return {x: nodes[uf.find(index[x])] for x in nodes}


def _resolve(item: tuple, roots: dict) -> Iterator[tuple]:
    leaf, hub = item
    yield leaf, roots.get(hub, hub)


def _open_nodes(roots: dict) -> Iterator[tuple]:
    for node, root in roots.items():
        if node != root:
            yield node, root


class ConnectedComponents(beam.PTransform):
    """edges (u, v) -> (node, root) for every node of a component of two or more but its root (the smallest)."""

    def __init__(self, rounds: int = 8):
        super().__init__()
        self.rounds = rounds

    def expand(self, edges):
        edges = edges | "Canonical" >> beam.Map(_canonical) | "Loops" >> beam.Filter(lambda e: e[0] != e[1])
        edges = edges | "Distinct" >> beam.Distinct()
        for r in range(self.rounds):
            edges = edges | f"Large{r}" >> _Round(large_star) | f"Small{r}" >> _Round(small_star)
        adjacency = edges | "Both" >> beam.FlatMap(_both_ways) | "Adjacent" >> beam.GroupByKey()
        tagged = adjacency | "Leaves" >> beam.FlatMap(_leaf_edges)
        leaves = tagged | "StarLeaves" >> beam.Filter(lambda t: t[0] == "star") | beam.Map(lambda t: t[1])
        smaller = adjacency | "HasSmaller" >> beam.Map(lambda item: (item[0], any(v < item[0] for v in item[1])))
        checked = (leaves, smaller) | "ByHub" >> beam.CoGroupByKey() | "HubCheck" >> beam.FlatMap(_hub_check)
        open_edges = (
            (tagged, checked)
            | "AllTagged" >> beam.Flatten()
            | "Open" >> beam.Filter(lambda t: t[0] == "open")
            | "OpenEdges" >> beam.Map(lambda t: t[1])
        )
        roots = open_edges | "ToList" >> beam.combiners.ToList() | "UnionFind" >> beam.Map(finish)
        stars = checked | "Stars" >> beam.Filter(lambda t: t[0] == "star") | "StarEdges" >> beam.Map(lambda t: t[1])
        resolved = stars | "Resolve" >> beam.FlatMap(_resolve, beam.pvalue.AsSingleton(roots))
        rest = roots | "OpenNodes" >> beam.FlatMap(_open_nodes)
        return (resolved, rest) | "Result" >> beam.Flatten()
