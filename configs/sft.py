"""InstructGPT step 1: supervised fine-tuning on demonstrations (Ouyang et al., 2022, Sec. 3.5 and App. C).

Usage: python -m gptx.main sft --config=configs/sft.py[:demo] --workdir=SFT_DIR \
           --config.rlhf.init_from=PRETRAINED_DIR [--config.rlhf.select_from=RM_DIR]
  (no argument)  the 175 human-written self-instruct seed tasks in HH-RLHF's dialogue format
  :demo          the offline sentiment task: continue two lines of the bundled corpus with the next line
  :hh            the self-instruct tasks, sized for 2 CPU cores: the first step of the human-data path (README)
The model is the demo model (configs/demo.py), so `demo`'s WORKDIR/pretrain is a valid init_from (pass
--config.data.tokenizer=WORKDIR/tokenizer.model); for another model pass its --config.model.* values.
The recipe (gptx/rlhf/recipes.py RECIPES): the paper's 16 epochs, cosine decay and residual dropout 0.2, the loss
on response tokens only, a learning rate for a tiny model; selection of the checkpoint by reward with select_from.
"""

from gptx.rlhf import recipes


def get_config(arg: str = ""):
    return recipes.step_config("sft", arg)
