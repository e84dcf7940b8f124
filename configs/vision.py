"""GPT-4V-style vision at demo scale: digits (8x8, upscaled to 16x16) and captioned photos from ../shared/data.

Usage:
  python -m gptx.main train --config=configs/vision.py:clip --workdir=/tmp/clip
  python -m gptx.main train --config=configs/vision.py:multimodal --workdir=/tmp/mm \
      --config.vision.encoder_init=/tmp/clip --config.vision.decoder_init=/tmp/gptx_demo/pretrain

`arg`: clip (CLIP's symmetric cross-entropy), siglip (SigLIP's sigmoid loss) or multimodal. The contrastive text
tower is a small GPT; the multimodal decoder is the demo's GPT (configs/demo.py, same tokenizer settings), so a
demo run's pretrained model (WORKDIR/pretrain) serves as LLaVA's pretrained language model, and its
tokenizer.model (next to it, in the demo's WORKDIR) is reused when data.tokenizer points to it. The image encoder
of the multimodal model is the clip run's image tower (same config.vision sizes), frozen.
"""

from gptx import config as gptx_config

TOKENIZER_PIECES = 1024


def get_config(arg: str = "clip"):
    if arg not in ("clip", "siglip", "multimodal"):
        raise ValueError(f"configs/vision.py takes clip, siglip or multimodal, not {arg!r}")
    c = gptx_config.default()
    c.vision.task = "multimodal" if arg == "multimodal" else "clip"
    c.vision.loss = "siglip" if arg == "siglip" else "clip"
    c.tokenizer.vocab_size = TOKENIZER_PIECES
    c.data.update(corpus="bundled:tinyshakespeare", doc_separator="blank_line", val_fraction=0.1)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.train.update(log_every=10, eval_every=100, eval_batches=4, ckpt_every=500, keep_ckpts=1, weight_decay=0.1)
    if c.vision.task == "clip":
        # Text tower: a 2-layer GPT over captions of at most vision.text_len tokens.
        c.model.update(
            name="clip_text",
            arch="gpt2",
            vocab_size=TOKENIZER_PIECES,
            block_size=c.vision.text_len,
            n_layer=2,
            n_head=4,
            d_model=64,
            dropout=0.0,
            attn_dropout=0.0,
        )
        c.train.update(steps=400, batch_size=128, lr=2e-3, warmup_steps=40)
    else:
        # Decoder: the demo's GPT; one extra id after the tokenizer's pieces is the image placeholder
        # (rounded up to a multiple of 8 so the vocabulary splits over tensor-parallel devices).
        c.model.update(
            name="demo",
            arch="gpt2",
            vocab_size=TOKENIZER_PIECES + 8,
            block_size=128,
            n_layer=4,
            n_head=4,
            d_model=128,
            dropout=0.1,
            attn_dropout=0.0,
        )
        c.data.seq_len = 128
        c.train.update(steps=300, batch_size=16, lr=1e-3, warmup_steps=30)
        c.vision.update(projector_steps=100, projector_lr=2e-3)
    return c
