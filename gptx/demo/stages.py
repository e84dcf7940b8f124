"""The demo's stages by name, in report order, and the runner of a selection of them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import ml_collections

from gptx.demo import capability, fewshot, paradigms, prepare, pretrain, rlhf, sample, scaling, tokenizer, vision
from gptx.demo.report import Report
from gptx.errors import ConfigError

Stage = Callable[[ml_collections.ConfigDict, str, Report], None]

STAGES: dict[str, Stage] = {
    "prepare": prepare.stage,
    "tokenizer": tokenizer.stage,
    "pretrain": pretrain.stage,
    "sample": sample.stage,
    "fewshot": fewshot.stage,
    "scaling": scaling.stage,
    "capability": capability.stage,
    "vision": vision.stage,
    "rlhf": rlhf.stage,
    "paradigms": paradigms.stage,
}
OPT_IN = ("capability", "vision", "rlhf", "paradigms")  # minutes of CPU each: run with --stages=...


def run(cfg: ml_collections.ConfigDict, workdir: str, stages: Sequence[str] | None = None) -> str:
    """Runs the named stages (all but the opt-in ones by default) in order; returns the path of report.md."""
    stages = list(stages or [s for s in STAGES if s not in OPT_IN])
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown demo stage(s) in --stages: {unknown}; stages: {', '.join(STAGES)}")
    os.makedirs(workdir, exist_ok=True)
    report = Report(workdir, STAGES)
    for name in stages:
        print(f"== demo stage: {name}")
        STAGES[name](cfg, workdir, report)
    path = report.write()
    print(f"report: {path}")
    return path
