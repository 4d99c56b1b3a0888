"""GRPO from the warm-started policy (issue 17): corpus windows, gate, injection over the byte vocabulary and
bans on; Dr. GRPO; rollouts through the generation engine.

    python -m train.grpo --config configs/kolmogorov_grpo.py rl.init_from=runs/kolmogorov_warm
"""

from configs import kolmogorov_warm


def get_config():
    c = kolmogorov_warm.get_config()
    c.mode = "grpo"
    c.workdir = "runs/kolmogorov_grpo"
    c.train.update(dict(steps=300, lr=2e-6, warmup_steps=10, min_lr_ratio=1.0, log_every=10, eval_every=50,
                        ckpt_every=50, sample_every=25))
    c.rl.update(dict(pattern="cdv", sources_per_step=8, group_size=8, lam=0.3, d_greedy=False,
                     n_inject=2, n_ban=1, inject_vocab="bytes", rollout_impl="engine"))
    return c
