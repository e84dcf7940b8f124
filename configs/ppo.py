"""InstructGPT step 3: PPO-ptx against the reward model (Ouyang et al., 2022, Sec. 3.5; Ziegler et al., 2019).

Usage: python -m gptx.main ppo --config=configs/ppo.py[:demo] --workdir=PPO_DIR \
           --config.rlhf.init_from=SFT_DIR --config.rlhf.reward_from=RM_DIR [--config.rlhf.ptx_coef=1.0]
  (no argument)  HH-RLHF prompts
  :demo          corpus prompts; held-out samples judged by the VADER labeler (score and win rate against SFT)
  :hh            HH-RLHF prompts, sized for 2 CPU cores (the human-data path, README)
The reward and value models have the reward model's own size (read from reward_from's config.json). With `aot`
instead of `ppo`, the config's whole iteration is compiled for config.aot.topology (gptx/rlhf/aot.py).
Defaults: sampling temperature 0.7 with log-probs at the same temperature, per-token KL penalty with an adaptive β
(Ziegler et al.'s controller), GAE γ = 1, λ = 0.95, whitened advantages, clip 0.2 for policy and value, 4 epochs
of minibatches per rollout, dropout off. PPO-ptx mixes config.rlhf.ptx_coef times the LM loss of
config.data.corpus batches into every policy update (InstructGPT: 27.8).
"""

from gptx.rlhf import recipes


def get_config(arg: str = ""):
    return recipes.step_config("ppo", arg)
