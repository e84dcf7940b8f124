"""GPT-1 supervised fine-tuning (Radford et al., 2018, Sec. 4.1 "Fine-tuning details").

Usage: python -m gptx.main finetune --config=configs/finetune.py:sst2 --workdir=DIR \
           --config.finetune.init_from=PRETRAINED_WORKDIR
The argument names the task(s): sst2, sst2_full, rte, snli, hellaswag, or several joined by commas for one
multi-task model selected by task tokens ("sst2,rte,snli"). The model section is the demo model's
(configs/demo.py), so a demo run's workdir can be fine-tuned directly; for another pretrained model pass its
--config.model.* values. vocab_size leaves room for the fine-tuning tokens after the demo tokenizer's 1024
pieces: start, delim, extract and one task token per task (see gptx/data/finetune_tasks.py).
"""

from gptx import config as gptx_config


def get_config(arg: str = "sst2"):
    c = gptx_config.default()
    c.finetune.tasks = arg
    n_tasks = len([t for t in arg.split(",") if t.strip()])
    tokenizer_pieces = 1024
    c.model.update(
        name="demo",
        arch="gpt2",
        vocab_size=tokenizer_pieces + 3 + (n_tasks if n_tasks > 1 else 0),
        block_size=128,
        n_layer=4,
        n_head=4,
        d_model=128,
        dropout=0.1,  # the paper: dropout 0.1 everywhere, the classifier included (finetune.clf_dropout)
        attn_dropout=0.1,
    )
    c.tokenizer.vocab_size = tokenizer_pieces
    # The paper's recipe: lr 6.25e-5, batch 32, 3 epochs (finetune.epochs), linear warmup over 0.2% of training
    # then linear decay to 0 (finetune.warmup_fraction; train.warmup_steps is not used), λ = 0.5. Adam with
    # GPT-1's b2 = 0.999 and weight decay 0.01 on matrices, gradients clipped at norm 1.
    c.train.update(
        batch_size=32,
        lr=6.25e-5,
        b2=0.999,
        weight_decay=0.01,
        grad_clip=1.0,
        log_every=10,
        eval_every=100,
        eval_batches=8,
        ckpt_every=1000,
        keep_ckpts=1,
    )
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c
