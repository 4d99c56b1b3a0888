"""A tiny GRPO run on CPU: a 1-layer RetNet from scratch on the structured 'repeat' task (units of
2 letters from "ab" repeated to 8 bytes), about 35 s of CPU for 300 steps.

tests/test_grpo_train.py trains the first 150 of these steps (the rise is learnt by then) and asserts that
the mean reward of the last 50 beats that of the first 50 by >= 0.1 (measured: -0.095 -> +0.116 at 150 steps,
-> +0.115 at 300, with this config's seed). What it learns (docs/kolmogorov.md): the length
charge (C's code shrinks to the bare EOS) and the source's bytes (D emits source letters, chrF > 0);
it does not discover a code that carries information. D samples (d_greedy=False) so fidelity varies
within a group: with greedy D and an untrained policy every group has one fidelity."""

from configs import grpo


def get_config():
    c = grpo.get_config()
    c.workdir = "runs/grpo_tiny"
    c.model.update(dict(d_model=32, num_layers=1, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=16))
    c.train.update(dict(steps=300, lr=3e-3, warmup_steps=10, log_every=10, eval_every=100, ckpt_every=100,
                        sample_every=100))
    c.grpo.variant = "dr_grpo"
    c.rl.update(dict(source="repeat", alphabet="ab", unit_len=2, source_len=8, sources_per_step=2, group_size=8,
                     lam=0.1, d_greedy=False, code_budget=8, recon_budget=10, prompt_width=24, samples_to_log=2))
    return c
