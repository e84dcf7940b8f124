"""`gptx.main demo`: the GPT series in miniature on the bundled corpus, as a list of named stages.

Each stage writes its own section (Markdown + PNGs) under WORKDIR/report/, and WORKDIR/report.md is rebuilt
from all sections present after every stage, so `--stages=sample` alone still yields a complete report.

  stages.py     the stage registry (report order, the opt-in ones) and `run`
  report.py     the report's sections and its plots
  prepare.py    GPT-3's data pipeline on the demo corpus        tokenizer.py  SentencePiece BPE on the corpus
  pretrain.py   a tiny GPT-2 against the unigram entropy        sample.py     KV-cache samples from it
  fewshot.py    GPT-3's accuracy vs demonstrations              scaling.py    GPT-4's predictable scaling
  capability.py GPT-4's capability prediction (opt-in)
  vision.py     GPT-4V in miniature (opt-in)                     rlhf.py       InstructGPT in miniature (opt-in)
  paradigms.py  GPT-1 fine-tuning vs GPT-3 prompting on SST-2 (opt-in)

No library package holds demo code: each stage calls the library's public entry points.
"""

from gptx.demo.report import Report
from gptx.demo.stages import OPT_IN, STAGES, run

__all__ = ["OPT_IN", "STAGES", "Report", "run"]
