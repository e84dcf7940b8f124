"""InstructGPT step 2: the reward model on K-choose-2 comparisons (Ouyang et al., 2022, Sec. 3.5 and App. C).

Usage: python -m gptx.main rm --config=configs/rm.py[:demo] --workdir=RM_DIR --config.rlhf.init_from=SFT_DIR
  (no argument)  Anthropic HH-RLHF harmless-base comparisons (K = 2), split 90/10 by prompt
  :demo          K = 4 SFT samples per corpus prompt ranked by the VADER sentiment labeler (all 6 pairs of a prompt
                 in one batch element)
  :hh            HH-RLHF, sized for 2 CPU cores (the human-data path, README)
init_from is required (an SFT or pretrained run; --config.rlhf.allow_random_init=True to train from scratch). The
RM's size is init_from's, or --config.rlhf.reward_model.* (a paper size such as gpt3:6.7b, or explicit widths).
One epoch by default (the paper: more overfits); the reward's gain and bias then make SFT samples score mean 0,
std 1 (WORKDIR/reward_norm.json), or with --config.rlhf.reward_norm=demonstrations give the demonstrations mean 0.
Held-out pairwise accuracy is printed and written to WORKDIR/rm_results.json.
"""

from gptx.rlhf import recipes


def get_config(arg: str = ""):
    return recipes.step_config("rm", arg)
