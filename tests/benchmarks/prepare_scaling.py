"""How `prepare`'s memory and speed grow with the corpus: peak RSS and documents/s of the local and the Beam
runner on 1x, 2x, 4x copies of a corpus built from the shared corpora.

    python tests/benchmarks/prepare_scaling.py [--copies 1,2,4 --runners local,beam --base_docs 0 --max_train_mb 0]

The corpus: Debian copyright files and changelogs (debian_docs.jsonl.gz, raw) and KJV verses (curated), each
copy after the first with every fourth word changed, so copies survive exact and fuzzy dedup and every stage
sees k times the documents. Each (runner, size) runs `prepare` (configs/data.py's settings, no
decontamination) in a fresh subprocess; its peak RSS is that child's ru_maxrss (os.wait4, the per-child
counter behind getrusage(RUSAGE_CHILDREN)). The Beam runner runs here on FnApiRunner, in one process: its
GroupByKeys are held in that process's memory, which a distributed runner spreads over workers. stdout gets
exactly one JSON line: every run, and per runner the memory growth in MB of RSS per MB of input (least
squares slope over the sizes). The quality classifier's training sample (up to quality.max_train_bytes per
class, 50 MB by default) is held in memory with its features, so until a corpus fills it the sample grows with
the input too; --max_train_mb caps it lower to measure the streaming stages alone.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPORA = os.path.join(REPO, "..", "shared", "data", "corpora")


def _edited(text: str, copy: int) -> str:
    """Copy `copy` of a text: every fourth word gets a suffix, so no 5-word shingle survives unchanged."""
    if not copy:
        return text
    words = text.split(" ")
    return " ".join(w + f"q{copy}" if i % 4 == 0 and w else w for i, w in enumerate(words))


def write_corpus(out: str, copies: int, base_docs: int) -> int:
    """The corpus of `copies` copies under `out`; returns its size in bytes of text."""
    with gzip.open(os.path.join(CORPORA, "debian_docs.jsonl.gz"), "rt", encoding="utf-8") as f:
        debian = [json.loads(line)["text"] for line in f]
    with gzip.open(os.path.join(CORPORA, "kjv_bible_verses.tsv.gz"), "rt", encoding="utf-8") as f:
        kjv = [line.rstrip("\n").split("\t")[-1] for line in f][1:]
    if base_docs:
        debian, kjv = debian[:base_docs], kjv[: base_docs * 2]
    size = 0
    for name, texts in (("debian", debian), ("kjv", kjv)):
        with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
            for c in range(copies):
                for t in texts:
                    t = _edited(t, c)
                    size += len(t.encode())
                    f.write(json.dumps({"text": t}) + "\n")
    return size


def child(args) -> None:
    """One prepare run (in its own process); prints {"docs", "seconds"}."""
    sys.path.insert(0, REPO)
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from conftest import load_config

    from gptx.data import prepare

    cfg = load_config("data")
    p = cfg.data_prep
    p.sources = (
        dict(name="kjv", path=os.path.join(args.data, "kjv.jsonl"), role="curated", weight=1.0),
        dict(name="debian", path=os.path.join(args.data, "debian.jsonl"), role="raw", weight=1.0),
    )
    p.decontam.task_files = ()
    p.update(progress=False, runner=args.runner)
    if args.max_train_mb:
        p.quality.max_train_bytes = int(args.max_train_mb * 1e6)
    t0 = time.perf_counter()
    report = prepare.run(cfg, os.path.join(args.data, f"out_{args.runner}"))
    docs = report["stages"][0]["docs_out"]
    print(json.dumps({"docs": docs, "seconds": time.perf_counter() - t0}))


def measure(runner: str, data: str, max_train_mb: float = 0.0) -> dict:
    """Runs one child; its result with the child's peak RSS in MB."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--runner", runner, "--data", data]
    cmd += ["--max_train_mb", str(max_train_mb)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{runner} prepare failed (exit {proc.returncode})")
    res = json.loads(out.decode().strip().splitlines()[-1])
    return {**res, "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", default="1,2,4")
    ap.add_argument("--runners", default="local,beam")
    ap.add_argument("--base_docs", type=int, default=0, help="Debian documents per copy (0: all 8,576)")
    ap.add_argument(
        "--max_train_mb",
        type=float,
        default=0.0,
        help="cap on the quality classifier's training sample per class in MB (0: the config's, 50 MB); the "
        "sample is held in memory, so below the cap it grows with the corpus",
    )
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--runner", default="local")
    ap.add_argument("--data", default="")
    args = ap.parse_args()
    if args.child:
        return child(args)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in map(int, args.copies.split(",")):
            data = os.path.join(tmp, f"x{k}")
            os.makedirs(data)
            size = write_corpus(data, k, args.base_docs)
            for runner in args.runners.split(","):
                r = measure(runner, data, args.max_train_mb)
                runs.append(
                    {
                        "runner": runner,
                        "copies": k,
                        "input_mb": round(size / 1e6, 2),
                        "docs": r["docs"],
                        "seconds": round(r["seconds"], 1),
                        "docs_per_s": round(r["docs"] / r["seconds"], 1),
                        "peak_rss_mb": round(r["peak_rss_mb"], 1),
                    }
                )
                print(json.dumps(runs[-1]), file=sys.stderr)
    growth = {}
    for runner in args.runners.split(","):
        xs = [r["input_mb"] for r in runs if r["runner"] == runner]
        ys = [r["peak_rss_mb"] for r in runs if r["runner"] == runner]
        if len(xs) > 1:
            growth[runner] = round(float(np.polyfit(xs, ys, 1)[0]), 2)
    print(json.dumps({"runs": runs, "rss_mb_per_input_mb": growth}))


if __name__ == "__main__":
    main()
