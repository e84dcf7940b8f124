"""InstructGPT (Ouyang et al., 2022): supervised fine-tuning on demonstrations (`sft`), a reward model trained on
all K-choose-2 comparisons of a prompt as one batch element (`reward`), and PPO-ptx against it (`ppo`).

  data.py     demonstrations, ranked comparisons and prompts; seeded splits by prompt; token layouts
  common.py   token-level helpers shared by the three stages (positions from masks, last-token reads, loading)
  labeler.py  scorers that stand in for human labelers in offline runs (VADER sentiment)
  sft.py      the `sft` command: next-token loss on response tokens only, through the one training loop
  reward.py   the `rm` command: reward model, K-choose-2 loss, gain/bias normalisation, pairwise accuracy
  ppo.py      the `ppo` command: rollouts, per-token KL rewards, GAE, clipped policy and value losses, PPO-ptx
  stage.py    the steps' default recipes, the offline sentiment task, and the `rlhf` stage of `demo`
"""
