"""The text of `python -m gptx.main --help` and `python -m gptx.main CMD --help`."""

USAGE = "python -m gptx.main <command> --config=configs/NAME.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]"

# command -> (one line for `--help`, what `CMD --help` adds: usage, config files, the flags that matter)
HELP = {
    "train": (
        "pretrain a GPT on config.data.corpus (or, with configs/vision.py, the vision models); resumes",
        """usage: python -m gptx.main train --config=configs/NAME.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]

Trains from scratch, or resumes from the latest checkpoint in WORKDIR/checkpoints (model, optimizer and data
position). Writes metrics.jsonl, tensorboard/ and checkpoints/ to the workdir: a directory or a bucket
(--workdir=gs://BUCKET/RUN, with pip install 'gptx[gcs]'; a corpus may be gs:// too). SIGTERM saves a checkpoint and
exits 75 (rerun the same command to resume); a non-finite loss keeps the last good checkpoint and exits 3.

config files: configs/demo.py (tiny, CPU), configs/gpt1.py, configs/gpt2.py:124m|355m|774m|1.5b,
  configs/gpt3.py:125m|350m|760m|1.3b|2.7b|6.7b|13b|175b, configs/english.py,
  configs/vision.py:clip|siglip|multimodal
keys that matter: config.data.corpus, config.train.steps, config.train.batch_size, config.train.lr, config.mesh.*""",
    ),
    "tokenizer": (
        "train a tokenizer: SentencePiece (WORKDIR/tokenizer.model) or byte-level BPE (kind=bpe, tokenizer.json)",
        """usage: python -m gptx.main tokenizer --config=configs/NAME.py --workdir=DIR [--config.tokenizer.kind=bpe]

config files: configs/demo.py, configs/english.py, or any train config
keys that matter: config.data.corpus, config.tokenizer.kind (sentencepiece | bpe), config.tokenizer.vocab_size
SentencePiece BPE (the default) is written to WORKDIR/tokenizer.model; GPT-2/3's byte-level BPE
(--config.tokenizer.kind=bpe) to WORKDIR/tokenizer.json + tokenizer_config.json, which
transformers.AutoTokenizer.from_pretrained(WORKDIR) also reads""",
    ),
    "demo": (
        "the whole GPT series in miniature on the bundled corpus, ending in WORKDIR/report.md",
        """usage: python -m gptx.main demo --config=configs/demo.py --workdir=DIR [--stages=STAGE,...]

flags: --stages=tokenizer,pretrain,sample,...  the stages to run, in order (default: all but the opt-in ones;
  opt-in: vision, rlhf, paradigms)
config files: configs/demo.py""",
    ),
    "finetune": (
        "GPT-1 supervised fine-tuning with the paper's input transformations and auxiliary LM loss",
        """usage: python -m gptx.main finetune --config=configs/finetune.py[:TASKS] --workdir=DIR \\
    --config.finetune.init_from=PRETRAINED_WORKDIR

config files: configs/finetune.py:sst2 (or :rte,snli,hellaswag for one multi-task model)
Prints dev accuracy per task, writes WORKDIR/finetune_results.json.""",
    ),
    "prepare": (
        "GPT-3's data pipeline: filter, dedup, quality-classify, decontaminate and mix sources into shards",
        """usage: python -m gptx.main prepare --config=configs/data.py[:small] --workdir=OUTPUT_DIR

config files: configs/data.py (config.data_prep: sources, filters, dedup, quality, decontam, mix)
Writes ArrayRecord shards, report.json and summary.md; resumable. Train on it with --config.data.corpus=OUTPUT_DIR.""",
    ),
    "sample": (
        "continue prompts with the KV-cache decoder from the latest checkpoint of a run",
        """usage: python -m gptx.main sample --config=configs/NAME.py --checkpoint=WORKDIR --prompt=TEXT [--prompt=...]

flags: --prompt=TEXT (repeatable), --checkpoint=WORKDIR (the run to read; an alias of --workdir)
config files: the config the run was trained with
keys that matter: config.sample.* (temperature, top_k, top_p, stop, max_new_tokens, seed)""",
    ),
    "scaling": (
        "predictable scaling: sweep sizes, fit L(C) or L(N, D), predict the largest run before it trains",
        """usage: python -m gptx.main scaling sweep|fit|predict --config=configs/scaling.py[:grid|tiny] --workdir=DIR

actions: sweep (train every size not yet in WORKDIR/results.jsonl), fit (fit config.scaling.law to the finished
  runs: WORKDIR/fit.json), predict (the held-out or config.scaling.target run's loss, with an interval)
config files: configs/scaling.py (''; :grid for Chinchilla's L(N, D); :tiny, 3 runs of a few steps)""",
    ),
    "convert": (
        "import a Hugging Face GPT-2 / OpenAI GPT checkpoint into a workdir, or export one",
        """usage: python -m gptx.main convert --config=configs/gpt2.py:124m --workdir=DIR --hf_dir=PATH \\
    [--direction=import|export] [--allow_pickle]

flags: --hf_dir=PATH (the Hugging Face checkpoint directory), --direction=import (default) or export,
  --allow_pickle (read pickled pytorch_model.bin weights: pickles run code, trust the source)
config files: configs/gpt1.py, configs/gpt2.py:SIZE""",
    ),
    "eval": (
        "in-context learning evaluation (0/1/K-shot) of the latest checkpoint in the workdir",
        """usage: python -m gptx.main eval --config=configs/eval.py[:ARG] --workdir=RUN_DIR

config files: configs/eval.py
keys that matter: config.eval.tasks, config.eval.shots; prints a table, writes WORKDIR/eval_results.json""",
    ),
    "aot": (
        "compile the train step for a topology this machine lacks and report memory per device",
        """usage: python -m gptx.main aot --config=configs/NAME.py[:SIZE] --workdir=DIR --config.aot.topology=v5e:4x4

keys that matter: config.aot.topology (v5e:4x4, h100:2x8, cpu:8, ...), config.mesh.*
Exits 2 when the run does not fit. See launch/README.md.""",
    ),
    "sft": (
        "InstructGPT step 1: supervised fine-tuning on demonstrations",
        """usage: python -m gptx.main sft --config=configs/sft.py[:demo] --workdir=DIR \\
    --config.rlhf.init_from=PRETRAINED_WORKDIR

config files: configs/sft.py; writes WORKDIR/sft_results.json""",
    ),
    "rm": (
        "InstructGPT step 2: a reward model on K-choose-2 comparisons",
        """usage: python -m gptx.main rm --config=configs/rm.py[:demo] --workdir=DIR --config.rlhf.init_from=SFT_DIR

config files: configs/rm.py; writes WORKDIR/rm_results.json""",
    ),
    "ppo": (
        "InstructGPT step 3: PPO-ptx against the reward model",
        """usage: python -m gptx.main ppo --config=configs/ppo.py[:demo] --workdir=DIR \\
    --config.rlhf.init_from=SFT_DIR --config.rlhf.reward_from=RM_DIR [--config.rlhf.ptx_coef=1.0]

config files: configs/ppo.py; writes WORKDIR/ppo_results.json""",
    ),
    "config": (
        "print the resolved, validated config with every key (no workdir, no devices)",
        """usage: python -m gptx.main config --config=configs/NAME.py[:ARG] [--config.KEY=VALUE ...]

Prints one `key = value` line per key, after the overrides and validation, noting the schema default
(gptx/config.py) where the value differs. Any config file works.""",
    ),
}


def overview(commands) -> str:
    """What `python -m gptx.main --help` prints: usage, one line per command (in `commands` order), flags."""
    width = max(map(len, HELP))
    lines = [f"usage: {USAGE}", "", "commands:"]
    lines += [f"  {name:<{width}}  {HELP[name][0]}" for name in commands]
    lines += [
        "",
        "flags:",
        "  --config=FILE[:ARG]   a config file (configs/*.py) and its argument, e.g. configs/gpt3.py:350m",
        "  --config.KEY=VALUE    override any key; `python -m gptx.main config --config=FILE` lists them",
        "  --workdir=DIR         checkpoints, logs and reports (a local directory)",
        "  --verbosity=N         library log lines: WARNING and up by default; --verbosity=0 shows INFO",
        "",
        '`python -m gptx.main CMD --help` describes a command. Exit codes: README.md, section "Exit codes".',
    ]
    return "\n".join(lines)
