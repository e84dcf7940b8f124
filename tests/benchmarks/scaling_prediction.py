"""Benchmark: GPT-4 style predictable scaling on a CPU.

Prepares the GPT-3-style mix of ../shared/data (configs/data.py, every kept document once, so no run repeats
data), trains the sweep of configs/scaling.py on it (6 tiny 2-layer GPT-2s of growing width, ~50x apart in
compute, 20 tokens per parameter), fits L(C) = a C^b + c on all but the largest run, predicts the largest before
training it, trains it, and prints one JSON line with the predicted and measured losses and the relative error
(goal: within 3%) and whether the 90% interval covers it. Resumable: rerunning with the same --workdir skips
finished runs. About 20 minutes on 2 shared CPU cores. `--seeds=N` repeats the sweep with seeds 0..N-1
(initialisation, data order, validation split; WORKDIR/seedI) and reports how many of the N intervals covered
their measurement ("coverage"), beside every repetition's figures.

  python tests/benchmarks/scaling_prediction.py [--workdir=/tmp/gptx_scaling_bench3] [--data=PREPARED_DIR] [--seeds=5]
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


def run_sweep(cfg, workdir: str) -> dict:
    """One sweep and its frozen prediction of the largest run: the benchmark's figures for it."""
    from gptx import scaling

    results = scaling.sweep(cfg, workdir)  # predicts the largest run before training it
    pred = scaling.predict(cfg, workdir)
    target = pred["targets"][-1]
    runs = [results[name] for name, _ in scaling.schedule(cfg)]
    return {
        "runs": len(runs),
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
        "covered": bool(target["interval"][0] <= target["measured"] <= target["interval"][1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/gptx_scaling_bench3")
    parser.add_argument("--data", default="", help="prepared corpus directory (default: WORKDIR/data)")
    parser.add_argument("--seeds", type=int, default=1, help="repetitions, seeds 0..N-1 in WORKDIR/seedI: coverage")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(REPO))

    t0 = time.perf_counter()
    data_dir = os.path.abspath(args.data or os.path.join(args.workdir, "data"))
    prepare_corpus(data_dir)  # resumable: finished stages are skipped
    reps = []
    for seed in range(args.seeds):
        cfg = load_config()
        cfg.data.corpus = data_dir
        if seed:  # another initialisation, data order and validation split
            cfg.train.seed, cfg.data.seed, cfg.scaling.seed = seed, seed, seed
        t1 = time.perf_counter()
        workdir = args.workdir if args.seeds == 1 else os.path.join(args.workdir, f"seed{seed}")
        reps.append({"seed": seed, **run_sweep(cfg, workdir), "wall_s": time.perf_counter() - t1})
    out = {"benchmark": "scaling_prediction", "corpus": data_dir, **(reps[0] if args.seeds == 1 else {})}
    if args.seeds > 1:
        out["coverage"] = {"covered": sum(r["covered"] for r in reps), "repetitions": len(reps),
                           "rel_errors": [r["rel_error"] for r in reps]}  # fmt: skip
        out["repetitions"] = reps
    out.update(goal_rel_error=0.03, wall_s=time.perf_counter() - t0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
