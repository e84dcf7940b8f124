"""InstructGPT (Ouyang et al., 2022): supervised fine-tuning on demonstrations (`sft`), a reward model trained on
all K-choose-2 comparisons of a prompt as one batch element (`reward`), and PPO-ptx against it (`ppo`).

  data.py     demonstrations, ranked comparisons and prompts; seeded splits by prompt; token layouts
  common.py   what the three stages share: token-level helpers, sampling responses, loading the previous stage
  labeler.py  scorers that stand in for human labelers in offline runs (VADER sentiment)
  sft.py      the `sft` command: next-token loss on response tokens only, through the one training loop
  reward.py   the `rm` command: reward model, K-choose-2 loss, gain/bias normalisation, pairwise accuracy
  objective.py  PPO's formulas: per-token KL rewards, GAE, whitening, clipped losses, the KL controller
  ppo.py      the algorithm: the four models, scoring a rollout, the minibatch update with PPO-ptx
  ppo_run.py  the `ppo` command: prompts, one iteration per step of the training loop, held-out evaluation
  sizes.py    the reward (and value) model's own shape: a paper size, a workdir's, or the policy's
  aot.py      the `aot` memory check of one PPO iteration, each model at its own size
  recipes.py  the steps' default configs (configs/{sft,rm,ppo}.py), their `:demo` offline sentiment task and the
              `:hh` human-data path sized for 2 CPU cores
"""
