"""The warm start at CPU size (tests/test_kolmogorov_warm.py): a 2-layer RetNet from scratch, sources of random
words from a small vocabulary (rl.source=words), 22-word dictionary."""

from configs import kolmogorov_warm


def get_config():
    c = kolmogorov_warm.get_config()
    c.workdir = "runs/kolmogorov_warm_tiny"
    c.model.update(dict(d_model=64, num_layers=2, num_heads=2, qk_dim=64, v_dim=128, ffn_dim=128,
                        compute_dtype="float32", chunk_size=16))
    c.train.update(dict(steps=200, lr=3e-3, warmup_steps=10, log_every=50, eval_every=200, ckpt_every=200))
    c.rl.update(dict(source="words", source_len=24, code_budget=24, recon_budget=28, prompt_width=40))
    c.warm.update(dict(sources_per_step=16, shorthand_p=0.0, eval_sources=8))
    return c
