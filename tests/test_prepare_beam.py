"""`prepare` on Apache Beam (config.data_prep.runner=beam): the same answer as the local runner, and
connected components that agree with union-find on graphs where naive label propagation needs many rounds."""

import collections
import gzip
import json
import random

import pytest
from conftest import SHARED_DATA, load_config

from gptx import config as config_lib
from gptx.data import dedup, prepare, records, sources

beam = pytest.importorskip("apache_beam", reason="Apache Beam is not installed (pip install -e '.[beam]')")
from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # noqa: E402

from gptx.data.beam import components  # noqa: E402

CORPORA = SHARED_DATA / "corpora"
needs_corpora = pytest.mark.skipif(
    not (CORPORA / "fortunes.jsonl").exists(), reason=f"shared corpora not found under {CORPORA}"
)


def _edit(text: str, k: int) -> str:
    """The text with its k-th word (from the end) replaced: a near-duplicate of a long text."""
    words = text.split(" ")
    words[-1 - 3 * k] = f"edited{k}"
    return " ".join(words)


def _jsonl(path, limit):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(limit), f, strict=False)]


def _corpus(tmp_path, verify: bool, mode: str):
    """Curated Shakespeare in two files with exact copies and chains of near-duplicates (each link one word
    apart, the ends further apart than the threshold), KJV verses (TSV), raw fortunes (near-duplicates of their
    own) and Debian copyright files (JSONL with their own ids), a LAMBADA passage planted in two documents."""
    plays = [d for d in sources.read_documents("bundled:tinyshakespeare") if len(d.split()) > 60][:120]
    chains = [_edit(plays[i], k) for i in range(0, 12, 3) for k in range(1, 4)]
    lambada = _jsonl(SHARED_DATA / "lambada" / "lambada_test.jsonl", 1)[0]["text"]
    plays[5] = plays[5] + "\n" + lambada + "\n" + plays[6]
    (tmp_path / "plays1.txt").write_text("\n\n".join(plays[:60] + chains[:6]))
    (tmp_path / "plays2.txt").write_text("\n\n".join(plays[60:] + chains[6:] + plays[:4]))
    debian = _jsonl(CORPORA / "debian_docs.jsonl.gz", 80)
    debian[3]["text"] = lambada + "\n" + debian[3]["text"]
    debian += [{**debian[i], "id": f"copy-{i}"} for i in range(5)]  # exact copies from a later line
    (tmp_path / "debian.jsonl").write_text("".join(json.dumps(r) + "\n" for r in debian))
    cfg = config_lib.default()
    cfg.data_prep.sources = (
        dict(name="plays", path=str(tmp_path / "plays*.txt"), role="curated", weight=3.0),
        dict(name="kjv", path=str(CORPORA / "kjv_bible_verses.tsv.gz"), role="curated", limit=300),
        dict(name="fortunes", path=str(CORPORA / "fortunes.jsonl"), role="raw", limit=1200),
        dict(name="debian", path=str(tmp_path / "debian.jsonl"), role="none", weight=0.5),
    )
    cfg.data_prep.update(shard_docs=150, val_fraction=0.05, progress=False)
    cfg.data_prep.dedup.verify = verify
    cfg.data_prep.quality.update(hash_bits=14, max_train_docs=400, max_train_bytes=100_000 if verify else 20_000)
    task = SHARED_DATA / "lambada" / "lambada_test.jsonl"
    cfg.data_prep.decontam.update(task_files=(str(task),), mode=mode, window=50, min_piece=50)
    cfg.data_prep.mix.max_epochs = 2.0
    return cfg


def _shard_records(out):
    from array_record.python import array_record_module

    got = {}
    for split in records.SPLITS:
        for path in records.shard_files(str(out), split):
            reader = array_record_module.ArrayRecordReader(path)
            got.setdefault(split, []).extend(json.loads(r) for r in reader.read_all())
            reader.close()
    return got


@needs_corpora
@pytest.mark.parametrize("verify,mode", [(True, "split"), (False, "drop")])
def test_beam_runner_keeps_the_same_documents_and_writes_the_same_shards(tmp_path, verify, mode):
    cfg = _corpus(tmp_path, verify, mode)
    local = prepare.run(cfg, str(tmp_path / "local"))
    cfg.data_prep.runner = "beam"
    distributed = prepare.run(cfg, str(tmp_path / "beam"))
    stages = {s["stage"]: s for s in local["stages"]}
    assert stages["exact_dedup"]["details"]["docs_removed"] >= 9  # 4 copied plays, 5 copied Debian files
    assert stages["fuzzy_dedup"]["details"]["docs_removed"] >= 12  # the chains, and near-duplicate fortunes
    assert stages["decontam"]["details"]["docs_contaminated"] >= 1
    assert stages["quality"]["details"]["raw_sources"]["fortunes"]["kept"] > 0
    assert max(r["epochs"] for r in stages["mix"]["details"]["sources"]) > 1.0  # a small source is repeated
    for a, b in zip(local["stages"], distributed["stages"], strict=True):  # every stage keeps the same documents
        assert (a["stage"], a["per_source"]) == (b["stage"], b["per_source"])
    # The same report, but for how many candidate pairs were checked: the local runner skips the pairs already
    # joined through others, the distributed one checks every distinct pair.
    counts = ("candidates_checked", "false_positives_rejected")
    for name in ("read", "filter", "exact_dedup", "fuzzy_dedup", "decontam", "mix"):
        a, b = (
            {k: v for k, v in rep[name]["details"].items() if k not in counts}
            for rep in (stages, {s["stage"]: s for s in distributed["stages"]})
        )
        assert a == b, name
    want, got = _shard_records(tmp_path / "local"), _shard_records(tmp_path / "beam")
    for split in records.SPLITS:  # the same records; the Beam runner happens to keep their order too
        assert collections.Counter(map(json.dumps, want[split])) == collections.Counter(map(json.dumps, got[split]))
    ids = {r["id"] for rs in got.values() for r in rs}
    debian = {i.split("#")[0] for rs in got.values() for r in rs if r["source"] == "debian" for i in [r["id"]]}
    assert debian and all(i.endswith(("copyright", "gz")) for i in debian)  # their own ids, not file:line
    assert any("#epoch1" in i for i in ids)
    assert mode != "split" or stages["decontam"]["details"]["pieces_kept"] >= 2
    assert {k: v for k, v in distributed["shards"].items()} == local["shards"]
    assert (tmp_path / "beam" / "summary.md").exists() and (tmp_path / "beam" / "quality_model.npz").exists()


def _both_runners(cfg, tmp_path):
    """(local report, Beam report, local shard records, Beam shard records) of one config."""
    local = prepare.run(cfg, str(tmp_path / "local"))
    cfg.data_prep.runner = "beam"
    distributed = prepare.run(cfg, str(tmp_path / "beam"))
    return local, distributed, _shard_records(tmp_path / "local"), _shard_records(tmp_path / "beam")


@needs_corpora
@pytest.mark.slow
def test_beam_runner_agrees_on_the_shared_corpora_config(tmp_path):
    """configs/data.py:small: five sources in three formats, 15 evaluation files, 2,000 documents per source."""
    cfg = load_config("data", "small")
    cfg.data_prep.progress = False
    local, distributed, want, got = _both_runners(cfg, tmp_path)
    assert [s["per_source"] for s in local["stages"]] == [s["per_source"] for s in distributed["stages"]]
    for split in records.SPLITS:
        assert collections.Counter(map(json.dumps, want[split])) == collections.Counter(map(json.dumps, got[split]))
    assert local["shards"]["train_docs"] > 1000


@pytest.mark.slow
def test_beam_runner_agrees_on_the_demo_corpus(tmp_path):
    from gptx.demo.prepare import prepare_config

    cfg = prepare_config(load_config("demo"), str(tmp_path))
    local, distributed, want, got = _both_runners(cfg, tmp_path)
    assert [s["per_source"] for s in local["stages"]] == [s["per_source"] for s in distributed["stages"]]
    assert want == got


def _write_json(value, path):
    with open(path, "w") as f:
        json.dump(value, f)


def _run_components(edges, rounds, tmp_path):
    """({node: root} from the Beam transform, the number of edges its rounds left to union-find)."""
    path = str(tmp_path / "components.json")
    p = beam.Pipeline(runner=FnApiRunner())
    result = p | beam.Create(edges) | components.ConnectedComponents(rounds)
    _ = result | beam.combiners.ToList() | beam.Map(_write_json, path)
    run = p.run()
    run.wait_until_finish()
    query = run.metrics().query(beam.metrics.MetricsFilter().with_name("open_edges"))
    with open(path) as f:
        return dict(map(tuple, json.load(f))), sum(c.committed for c in query["counters"])


def _union_find(n, edges):
    uf = dedup.UnionFind(n)
    for a, b in edges:
        uf.union(a, b)
    return {i: uf.find(i) for i in range(n) if uf.find(i) != i}


def _graph(seed=0):
    """Long paths with shuffled labels (a path of 600 needs ~600 rounds of naive label propagation), a star,
    and random edges among the rest."""
    rng = random.Random(seed)
    n = 1500
    label = list(range(n))
    rng.shuffle(label)
    edges = [(label[i], label[i + 1]) for i in range(599)]
    edges += [(label[i], label[i + 1]) for i in range(600, 899)]
    edges += [(label[900], label[i]) for i in range(901, 950)]
    edges += [(label[rng.randrange(950, n)], label[rng.randrange(950, n)]) for _ in range(400)]
    return n, edges


@pytest.mark.parametrize("rounds", [0, 2, 8])
def test_beam_connected_components_equal_union_find_on_long_chains(rounds, tmp_path):
    """Right after any number of rounds: what the rounds leave undone, union-find on one worker finishes; the
    default 8 rounds leave nothing on these chains."""
    n, edges = _graph()
    roots, open_edges = _run_components(edges, rounds, tmp_path)
    assert roots == _union_find(n, edges)
    assert open_edges > 1000 if rounds == 0 else (rounds < 8 or open_edges == 0)


def _star_rounds(edges, max_rounds=30):
    """(rounds of large-star then small-star until every component is a star, {leaf: centre}), in plain Python."""
    current = {tuple(sorted(e)) for e in edges if e[0] != e[1]}
    for rounds in range(1, max_rounds + 1):
        for step in (components.large_star, components.small_star):
            adjacency = collections.defaultdict(list)
            for a, b in current:
                adjacency[a].append(b)
                adjacency[b].append(a)
            current = {tuple(sorted(e)) for item in adjacency.items() for e in step(item)}
        centre = {b: a for a, b in current}
        if len(centre) == len(current) and not set(centre) & set(centre.values()):
            return rounds, centre
    return max_rounds + 1, {}


def test_large_and_small_star_rounds_turn_long_chains_into_stars():
    """The rounds alone (no union-find finish) reach stars around each component's smallest node in far fewer
    rounds than the longest path (599 edges)."""
    n, edges = _graph(1)
    rounds, centre = _star_rounds(edges)
    assert rounds <= 12 and centre == _union_find(n, edges)


def test_dry_run_prints_the_resolved_pipeline_options_without_running(tmp_path):
    from gptx.data.beam import __main__ as beam_main

    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one two three"}) + "\n")
    cfg = config_lib.default()
    cfg.data_prep.sources = (dict(name="a", path=str(tmp_path / "a.jsonl")),)
    cfg.data_prep.quality.enabled = False
    cfg.data_prep.beam_options = "--runner=DataflowRunner --project=p1 --region=r1 --temp_location=gs://b/tmp"
    plan = beam_main.dry_run(cfg, "gs://b/out")
    assert plan["pipeline_options"]["runner"] == "DataflowRunner" and plan["pipeline_options"]["project"] == "p1"
    assert plan["sources"] == {"a": [str(tmp_path / "a.jsonl")]} and plan["stages"][-1] == "shards"
    assert not list(tmp_path.glob("*.array_record"))
    cfg.data_prep.beam_options = ""
    assert "FnApiRunner" in beam_main.dry_run(cfg, str(tmp_path))["pipeline_options"]["runner"]
    cfg.data_prep.runner = "spark"
    with pytest.raises(config_lib.ConfigError, match="runner must be local or beam"):
        prepare.validate_data_prep(cfg)
