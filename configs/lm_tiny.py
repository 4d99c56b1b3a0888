"""A tiny byte LM for tests and smoke runs: trains in about a minute on 2 CPU cores."""

from configs import lm


def get_config():
    c = lm.get_config()
    c.workdir = "runs/lm_tiny"
    c.model.update(dict(d_model=64, num_layers=2, num_heads=2, qk_dim=64, v_dim=128, ffn_dim=192, chunk_size=32))
    c.data.update(dict(max_files=60, seq_len=128, batch_size=16))
    c.train.update(dict(steps=300, lr=3e-3, warmup_steps=30, eval_every=100, eval_max_bytes=16384,
                        ckpt_every=100, log_every=10, sample_every=300, sample_len=64))
    return c
