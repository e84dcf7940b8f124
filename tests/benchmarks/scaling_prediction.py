"""Benchmark: GPT-4 style predictable scaling on a CPU.

Prepares the GPT-3-style mix of ../shared/data (configs/data.py, every kept document once, so no run repeats
data), trains the sweep of configs/scaling.py on it (6 tiny 2-layer GPT-2s of growing width, ~50x apart in
compute, 20 tokens per parameter), fits L(C) = a C^b + c on all but the largest run, predicts the largest before
training it, trains it, and prints one JSON line with the predicted and measured losses and the relative error
(goal: within 3%). Resumable: rerunning with the same --workdir skips finished runs. About 20 minutes on 2 shared
CPU cores.

  python tests/benchmarks/scaling_prediction.py [--workdir=/tmp/gptx_scaling_bench3] [--data=PREPARED_DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_config_file(name: str, arg: str = ""):
    spec = importlib.util.spec_from_file_location(f"configs_{name[:-3]}", REPO / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def load_config(arg: str = ""):
    return load_config_file("scaling.py", arg)


def prepare_corpus(data_dir: str) -> None:
    """configs/data.py's sources and filters, but every kept document exactly once (no source repeated)."""
    from gptx.data import prepare

    cfg = load_config_file("data.py")
    cfg.data_prep.mix.update(total_bytes=10**12, max_epochs=1.0)  # each source's share capped at one pass
    cfg.data_prep.progress = False
    cwd = os.getcwd()
    os.chdir(REPO)  # configs/data.py names ../shared/data relative to the repository root
    try:
        prepare.run(cfg, data_dir)
    finally:
        os.chdir(cwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/gptx_scaling_bench3")
    parser.add_argument("--data", default="", help="prepared corpus directory (default: WORKDIR/data)")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(REPO))
    from gptx import scaling

    t0 = time.perf_counter()
    data_dir = os.path.abspath(args.data or os.path.join(args.workdir, "data"))
    prepare_corpus(data_dir)  # resumable: finished stages are skipped
    cfg = load_config()
    cfg.data.corpus = data_dir
    results = scaling.sweep(cfg, args.workdir)  # predicts the largest run before training it
    pred = scaling.predict(cfg, args.workdir)
    target = pred["targets"][-1]
    runs = [results[name] for name, _ in scaling.schedule(cfg)]
    print(
        json.dumps(
            {
                "benchmark": "scaling_prediction",
                "runs": len(runs),
                "corpus": data_dir,
                "tokens_per_param": cfg.scaling.tokens_per_param,
                "min_steps": cfg.scaling.min_steps,
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
