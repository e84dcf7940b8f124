"""Per-device memory of a GPT-3 train step with XLA attention vs Pallas splash attention, from the TPU compiler.

Needs libtpu (launch/README.md: `pip install --target ~/.libtpu libtpu==0.0.42.1`, then
TPU_LIBRARY_PATH=~/.libtpu/libtpu/libtpu.so); no TPU. Prints one JSON line: the compiler's temporaries per device
for each implementation and splash / xla.

  python tests/benchmarks/splash_aot.py --size=125m --topology=v5e:2x2 --batch=8 --seq=2048
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from configs import gpt3  # noqa: E402
from gptx import aot  # noqa: E402


def measure(size: str, topology: str, batch: int, seq: int, impl: str) -> dict:
    cfg = gpt3.get_config(size)
    cfg.train.batch_size = batch
    cfg.model.block_size = max(cfg.model.block_size, seq)
    cfg.data.seq_len = seq
    cfg.model.attention_impl = impl
    target = aot.parse_topology(topology)
    devices, note = aot.target_devices(target)
    if devices is None:
        raise SystemExit(f"no TPU compiler: {note}")
    report = aot.analyze(cfg, target, devices)
    return dict(temp=report.activation_bytes, total=report.total_bytes, compile_s=round(report.compile_s, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="125m")
    p.add_argument("--topology", default="v5e:2x2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    a = p.parse_args()
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # another aot run may hold libtpu's lockfile
    figures = {impl: measure(a.size, a.topology, a.batch, a.seq, impl) for impl in ("xla", "splash")}
    ratio = figures["splash"]["temp"] / figures["xla"]["temp"]
    print(
        json.dumps(
            {
                "size": a.size,
                "topology": a.topology,
                "batch": a.batch,
                "seq": a.seq,
                **figures,
                "temp_ratio_splash_over_xla": round(ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
