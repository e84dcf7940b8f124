"""`prepare` on Apache Beam: the stages of gptx.data.prepare as one pipeline, same answer, any Beam runner.

Each stage is a Beam transform over the local runner's per-document functions (gptx.data.beam.documents,
dedup_stages, corpus_stages, mix_stage). After the run the driver reads the stage tallies and details the
pipeline wrote to OUTPUT/stages/beam_report.json and writes report.json and summary.md as the local runner
does. Without `--runner` in config.data_prep.beam_options the pipeline runs here on Beam's FnApiRunner, which
never downloads anything (Beam's DirectRunner first tries to fetch its "prism" binary); with
`--runner=DataflowRunner` (or Flink, Spark) it runs on that cluster, reading and writing gs:// paths.
There is no stage-by-stage resume: a Beam runner retries failed work itself.
"""

from __future__ import annotations

import json
import shlex
import time

import apache_beam as beam
import ml_collections
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TypeOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from gptx import fs
from gptx.data import prepare_plan, records
from gptx.data.beam import common, corpus_stages, dedup_stages, documents, mix_stage

STAGE_FNS = {
    "normalize": documents.stage_normalize,
    "filter": documents.stage_filter,
    "exact_dedup": dedup_stages.stage_exact_dedup,
    "fuzzy_dedup": dedup_stages.stage_fuzzy_dedup,
    "quality": corpus_stages.stage_quality,
    "decontam": corpus_stages.stage_decontam,
}
REPORT = "beam_report.json"


def pipeline_options(beam_options: str) -> PipelineOptions:
    """PipelineOptions from the command-line style string of config.data_prep.beam_options. Type hints inferred
    from DoFns that also yield tagged outputs are wrong, so the construction-time type check is off."""
    options = PipelineOptions(shlex.split(beam_options))
    options.view_as(TypeOptions).pipeline_type_check = False
    return options


def runner_for(options: PipelineOptions):
    """The runner the options name, or FnApiRunner (local, in this process, no download) when they name none."""
    return options.view_as(StandardOptions).runner or FnApiRunner()


def resolved_options(beam_options: str) -> dict:
    """The pipeline options as Beam resolves them (what a dry run prints)."""
    opts = pipeline_options(beam_options).get_all_options(drop_default=True)
    opts.setdefault("runner", "FnApiRunner (local, in-process)")
    return opts


def _write_report(parts: list[tuple], path: str) -> None:
    fs.write_atomic(path, json.dumps(parts, default=str))


def build(pipeline: beam.Pipeline, ctx: prepare_plan.Context) -> None:
    """Adds every stage to `pipeline`; the stage tallies and details end in OUTPUT/stages/beam_report.json."""
    recs, details = documents.stage_read(pipeline, ctx)
    parts = [details | "readPart" >> beam.Map(lambda d: ("read", "details", d))]
    parts.append(common.tally(recs, "readTally") | "readTallyPart" >> beam.Map(lambda t: ("read", "tally", t)))
    for name in prepare_plan.STAGES[1:-1]:
        recs, details = STAGE_FNS[name](recs, ctx)
        parts.append(details | f"{name}Part" >> beam.Map(lambda d, n=name: (n, "details", d)))
        tally = common.tally(recs, f"{name}Tally")
        parts.append(tally | f"{name}TallyPart" >> beam.Map(lambda t, n=name: (n, "tally", t)))
    mixed, details, shards = mix_stage.stage_mix(recs, ctx)
    parts.append(details | "mixPart" >> beam.Map(lambda d: ("mix", "details", d)))
    parts.append(common.tally(mixed, "mixTally") | "mixTallyPart" >> beam.Map(lambda t: ("mix", "tally", t)))
    splits = mixed | "Splits" >> beam.Map(lambda r: r["split"]) | "SplitCount" >> beam.combiners.Count.PerElement()
    splits = splits | "SplitList" >> beam.combiners.ToList()
    parts.append(splits | "SplitPart" >> beam.Map(lambda s: ("shards", "docs", dict(s))))
    shards = shards | "ShardList" >> beam.combiners.ToList()
    parts.append(shards | "ShardPart" >> beam.Map(lambda s: ("shards", "names", sorted(s))))
    path = fs.join(ctx.out, "stages", REPORT)
    everything = parts | "Parts" >> beam.Flatten() | "AllParts" >> beam.combiners.ToList()
    _ = everything | "WriteReport" >> beam.Map(_write_report, path)


def assemble_report(ctx: prepare_plan.Context, parts: list, seconds: float) -> tuple[list[dict], dict]:
    """(stage rows, shard summary) of the local runner's report from the pipeline's parts."""
    got = {(stage, kind): value for stage, kind, value in parts}
    rows, before = [], {}
    for name in prepare_plan.STAGES:
        after = got.get((name, "tally"), {})
        rows.append({**prepare_plan.stage_row(name, before, after, 0.0, got[(name, "details")]), "resumed": False})
        before = after
    names, docs = got.get(("shards", "names"), []), got.get(("shards", "docs"), {})
    shards = {
        "train_shards": sum(n.startswith("train") for n in names),
        "val_shards": sum(n.startswith("val") for n in names),
        "train_docs": docs.get("train", 0),
        "val_docs": docs.get("val", 0),
        "written": len(names),
        "skipped": 0,
    }
    return rows, shards


def _remove_old_shards(out: str) -> None:
    """Shards of an earlier run would mix into this corpus."""
    for split in records.SPLITS:
        for path in fs.glob(fs.join(out, f"{split}-*-of-*{records.SUFFIX}")):
            fs.remove(path)


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """`prepare` with config.data_prep.runner=beam: runs the pipeline, then writes report.json and summary.md."""
    sources = prepare_plan.validate_data_prep(cfg)
    out = cfg.data_prep.output_dir or workdir
    fs.makedirs(fs.join(out, "stages"))
    ctx = prepare_plan.Context(cfg.data_prep, sources, out)
    _remove_old_shards(out)
    options = pipeline_options(cfg.data_prep.beam_options)
    t0 = time.perf_counter()
    with beam.Pipeline(runner=runner_for(options), options=options) as pipeline:
        build(pipeline, ctx)
    seconds = time.perf_counter() - t0
    parts = json.loads(fs.read_text(fs.join(out, "stages", REPORT)))
    rows, shards = assemble_report(ctx, parts, seconds)
    return prepare_plan.write_report(cfg, out, "beam", seconds, rows, shards)
