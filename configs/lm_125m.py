"""A ~128M-parameter RetNet byte LM for one GPU (bf16 compute, float32 parameters)."""

from configs import lm


def get_config():
    c = lm.get_config()
    c.workdir = "runs/lm_125m"
    c.model.update(dict(d_model=768, num_layers=12, num_heads=6, qk_dim=768, v_dim=1536, ffn_dim=2560,
                        compute_dtype="bfloat16", chunk_size=64))
    c.data.update(dict(seq_len=2048, batch_size=32))
    c.train.update(dict(steps=20000, lr=6e-4, warmup_steps=1000, eval_every=1000, eval_max_bytes=1 << 20,
                        ckpt_every=1000, log_every=50, sample_every=2000))
    return c
