"""A scaling sweep of tiny GPT-2s: fit L(C) on the small runs, predict the largest before it trains.

Usage:
  python -m gptx.main prepare --config=configs/data.py --workdir=/tmp/gptx_data \
      --config.data_prep.mix.total_bytes=1000000000 --config.data_prep.mix.max_epochs=1   # every document once
  python -m gptx.main scaling sweep --config=configs/scaling.py --workdir=/tmp/gptx_scaling \
      --config.data.corpus=/tmp/gptx_data
  (actions: sweep | fit | predict; the sweep predicts its held-out largest run before training it)
  Capability too: add --config.scaling.eval_tasks=TASKS (names, groups or task files; config.eval's samples,
  temperature, limit and sandbox settings apply): every run is evaluated when it finishes, and the held-out run's
  −E_P[log pass_rate] = alpha C^-k is predicted beside its loss (config.scaling.capability_task picks the task).

`arg` picks a preset:
  ""      6 widths, d_model 16..64 at a fixed 2 layers, 20 tokens per parameter (Chinchilla), >= 400 steps each:
          ~50x in compute, the largest run 2.7M tokens. Its default corpus, the bundled Tiny Shakespeare (~0.3M tokens),
          would be repeated ~10 times by the largest run: train on a prepared corpus as above.
  "grid"  Chinchilla's L(N, D): 4 sizes x 4 token budgets (5 to 40 tokens per parameter), law="chinchilla".
  "capability"  GPT-4's capability prediction: 4 widths fitted, d72 held out (~7x the compute of the largest fitted
          run), generated max-of-four-digits problems (gptx/scaling/capability_data.py) at 30% of the corpus's bytes,
          every run evaluated on `max_digit_code` (16 samples at temperature 1 per problem); "capability_large": widths
          56-80 fitted, d128 held out (5.3x), all past the step where the task is learnt; "capability_tiny": seconds.
  "tiny"  3 runs of a few steps (d_model 8, 16, 24: the 3 points L(C) = a C^b + c needs), for tests:
          `scaling sweep --config=configs/scaling.py:tiny`, then `scaling fit` on the same workdir.

Why these settings (tests/benchmarks/scaling_prediction.py): a run of ~100 steps is still in the early transient
of training (its loss sits far above the line the longer runs follow), and with 4-5 points a transient at the small
end bends the whole fit of L(C) = a C^b + c. Every run therefore trains for at least `min_steps` steps, with the
same warmup and a cosine schedule that ends at the run's last step, and the eval loss averages 32 fixed batches.
Depth is fixed and only width scales: a ladder that also adds layers (1, 1, 2, 2, 2, 3) makes its largest run the
only 3-layer model, which beats the width-only trend of the runs it is predicted from, so the fit mixes two scaling
axes and over-predicts the largest run's loss.
"""

from gptx import config as gptx_config
from gptx.errors import ConfigError


def get_config(arg: str = ""):
    c = gptx_config.default()
    c.model.update(
        name="scaling",
        arch="gpt2",
        vocab_size=512,
        block_size=64,
        n_layer=2,
        n_head=2,
        d_model=32,
        dropout=0.0,
        attn_dropout=0.0,
    )
    c.tokenizer.vocab_size = 512
    c.data.update(corpus="bundled:tinyshakespeare", doc_separator="blank_line", val_fraction=0.1)
    c.train.update(
        steps=1,  # set per run by the sweep schedule
        batch_size=16,
        lr=3e-3,
        warmup_steps=20,
        log_every=10,
        eval_batches=32,
        weight_decay=0.1,
        progress=False,
    )
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.scaling.update(
        n_sizes=7,  # d_model 16, 24, 32, 40, 48, 64: two of the seven geometric widths round to the same multiple of 8
        d_model_min=16,
        d_model_max=64,
        n_layer_min=2,  # one scaling axis (width): see the docstring
        n_layer_max=2,
        head_dim=8,
        tokens_per_param=20.0,
        min_steps=400,
        holdout=1,
        law="compute",
    )
    if arg == "grid":
        # Each size at 5..40 tokens per parameter: runs that differ in D at fixed N separate B/D^beta from A/N^alpha.
        # d_model from 24: a narrower model at 5 tokens per parameter would train for fewer than min_steps steps.
        c.scaling.update(n_sizes=4, d_model_min=24, d_model_max=56)
        c.scaling.update(tokens_per_param_grid=(5.0, 10.0, 20.0, 40.0), min_steps=100, law="chinchilla")
    elif arg == "tiny":
        c.scaling.update(n_sizes=3, d_model_min=8, d_model_max=24, n_layer_min=1, n_layer_max=1, tokens_per_param=1e-3)
        c.scaling.update(min_steps=4, holdout=0, bootstrap=20)
    elif arg in ("capability", "capability_large", "capability_tiny", "capability_graded"):
        # The held-out d72 run has ~7x the compute of the largest fitted one (d40); every run is evaluated on the
        # generated max_digit task, whose training data makes up task_data_weight of the bundled corpus's mix.
        c.scaling.update(n_sizes=5, d_models=(16, 24, 32, 40, 72), min_steps=300, holdout=1, bootstrap=0)
        c.scaling.update(task_data="max_digit", task_data_weight=0.3, eval_tasks="max_digit_code")
        c.data.val_fraction = 0.05
        c.eval.update(sandbox_workers=2, samples=0)  # the task's own: 16 samples at temperature 1
        if arg == "capability_large":  # every run past the step where the comparison is learnt; ~15 CPU minutes
            c.scaling.d_models = (56, 64, 72, 80, 128)  # d128: 5.3x the compute of d80
        if arg == "capability_tiny":  # seconds per run, for tests
            c.scaling.update(n_sizes=4, d_models=(8, 16, 24, 48), n_layer_min=1, n_layer_max=1, tokens_per_param=1e-3)
            c.scaling.update(min_steps=6)
            c.eval.update(samples=2, limit=6)
        if arg == "capability_graded":  # digit problems of graded difficulty (see gptx/scaling/graded_data.py)
            c.scaling.update(task_data="graded", task_data_weight=0.5, eval_tasks="graded_code")
            # d128: 5.3x the compute of d80; ~25 CPU minutes. The fitted widths straddle the strata's onsets
            # (mean pass@1 0.2 at d56 to 0.6 at d80); narrower ones sit at the rate of guessing on every stratum.
            c.scaling.d_models = (56, 64, 72, 80, 128)
    elif arg:
        raise ConfigError(
            f"configs/scaling.py has no preset {arg!r}; presets: '' (the default), grid, tiny, capability, "
            "capability_large, capability_tiny, capability_graded"
        )
    return c
