"""The `aot` check of a PPO iteration with a reward model of its own size: every model counted at its own shape,
the figures per device equal to the compiler's own accounting of the programs `ppo` runs."""

import jax
from conftest import tiny_config

from gptx import aot
from gptx.rlhf import aot as rlhf_aot


def closed_form_params(n_layer: int, d: int, vocab: int, context: int) -> int:
    """GPT-2 parameters when n_head * d_head = d_model (as in tests/test_aot.py): 12 d^2 + 13 d per layer, the
    token and position tables, the final LayerNorm."""
    return n_layer * (12 * d * d + 13 * d) + vocab * d + context * d + 2 * d


def test_ppo_step_with_a_larger_reward_model_compiles_on_cpu_8_and_its_bytes_are_the_compilers():
    cfg = tiny_config(vocab_size=64, block_size=16, n_layer=1, n_head=2, d_model=32)
    cfg.data.seq_len = 16
    cfg.rlhf.update(stage="ppo", max_prompt_len=6, max_response_len=5, rollout_batch=8, minibatch=4, ppo_epochs=2)
    cfg.rlhf.reward_model.update(n_layer=2, d_model=48, n_head=4)
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    report = rlhf_aot.analyze(cfg, aot.parse_topology("cpu:8"), jax.devices())
    assert report.method == "compiled (cpu)" and report.num_devices == 8
    policy, rm = closed_form_params(1, 32, 64, 16), closed_form_params(2, 48, 64, 16) + 48 + 1  # + scalar head
    assert report.num_params == 2 * (policy + rm)  # policy and reference, value and reward model
    c, m = report.compiler, report.model_bytes
    # The compiler's argument bytes per device are our shard-shape figures, to the byte, less the inputs a program
    # does not read (jit prunes them). Scoring reads the four models' params, β, gain, bias and the episodes (two
    # rows a device of prompt and response tokens, int32, and their masks, bool), not the optimizer states.
    episodes = 2 * (6 * 4 + 6 + 5 * 4 + 5)
    assert c["score_argument"] == report.param_bytes + 4 + 8 + episodes
    # The update reads the trained state, the rollout less its two [B, 1] evaluation columns, the key and the KL.
    unread = 2 * 2 * 4
    key_and_kl = 8 + 4
    trained = m["policy"] + m["value"] + report.optimizer_bytes
    assert c["update_argument"] == trained + report.batch_bytes - unread + key_and_kl
    # The wider, deeper reward model holds more bytes than the policy on every device.
    m = report.model_bytes
    assert m["reward"] == m["value"] > 3 * m["policy"] and m["policy"] == m["reference"]
    assert report.total_bytes >= c["update_argument"] + c["update_temp"]
