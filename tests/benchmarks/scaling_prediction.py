"""Benchmark: GPT-4 style predictable scaling on a CPU.

Trains the sweep of configs/scaling.py (5 tiny GPT-2s on the bundled Tiny Shakespeare, ~85x apart in compute),
fits L(C) = a C^b + c on all but the largest run, predicts the largest before training it, trains it, and prints
one JSON line with the predicted and measured losses and the relative error (goal: within 3%).
Resumable: rerunning with the same --workdir skips finished runs. About 10-20 minutes on 2 CPU cores.

  python tests/benchmarks/scaling_prediction.py [--workdir=/tmp/gptx_scaling_bench]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import time

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_config(arg: str = ""):
    spec = importlib.util.spec_from_file_location("configs_scaling", REPO / "configs" / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/gptx_scaling_bench")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from gptx import scaling

    cfg = load_config()
    t0 = time.perf_counter()
    results = scaling.sweep(cfg, args.workdir)  # predicts the largest run before training it
    pred = scaling.predict(cfg, args.workdir)
    target = pred["targets"][-1]
    runs = [results[name] for name, _ in scaling.schedule(cfg)]
    print(
        json.dumps(
            {
                "benchmark": "scaling_prediction",
                "runs": len(runs),
                "compute_span": runs[-1]["compute"] / runs[0]["compute"],
                "extrapolation": target["compute"] / max(r["compute"] for r in runs[:-1]),
                "fit": pred["fit"],
                "target": target["name"],
                "predicted": target["predicted"],
                "interval": target["interval"],
                "measured": target["measured"],
                "rel_error": target["rel_error"],
                "goal_rel_error": 0.03,
                "wall_s": time.perf_counter() - t0,
            }
        )
    )


if __name__ == "__main__":
    main()
