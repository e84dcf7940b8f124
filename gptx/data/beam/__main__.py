"""`python -m gptx.data.beam --config=configs/data.py --workdir=OUT [--dry-run]`: `prepare` on Apache Beam.

The same as `python -m gptx.main prepare ... --config.data_prep.runner=beam`. With --dry-run it only checks
the config, lists the sources' files, prints the resolved pipeline options and the stages as JSON, and exits
without starting a pipeline.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags


def _define_flags() -> None:
    """The command's flags (defined only when run as a command, so importing this module defines nothing)."""
    config_flags.DEFINE_config_file("config", None, "A config file: configs/NAME.py[:ARG].")
    flags.DEFINE_string("workdir", None, "Output directory (local or gs://) unless data_prep.output_dir.")
    flags.DEFINE_bool("dry-run", False, "Print the resolved pipeline options and exit.")
    flags.mark_flags_as_required(["config", "workdir"])


def dry_run(cfg, workdir: str) -> dict:
    """What a run would do: the output, the pipeline options as Beam resolves them, the stages, the inputs."""
    from gptx.data import prepare, readers
    from gptx.data.beam import pipeline

    sources = prepare.validate_data_prep(cfg)
    return {
        "output_dir": cfg.data_prep.output_dir or workdir,
        "pipeline_options": pipeline.resolved_options(cfg.data_prep.beam_options),
        "stages": list(prepare.STAGES) + ["shards"],
        "sources": {s.name: readers.source_files(s) for s in sources},
    }


def main(argv) -> None:
    del argv
    cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    cfg.data_prep.runner = "beam"
    if flags.FLAGS["dry-run"].value:
        print(json.dumps(dry_run(cfg, workdir), indent=1))
        return
    from gptx.data import prepare

    report = prepare.run(cfg, workdir)
    print(json.dumps(report["shards"]))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
