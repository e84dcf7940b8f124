"""`prepare` on Apache Beam (config.data_prep.runner=beam): the same stages and answer as gptx.data.prepare,
on any Beam runner (here FnApiRunner; Dataflow, Flink or Spark through config.data_prep.beam_options).
Needs the `beam` extra: pip install -e ".[beam]"."""
