"""A 110M-parameter Llama-shape token model for one GPU (issue 18): 12 x 768, MHA 12 heads, SwiGLU 2048,
a 16384-token byte-level BPE trained on an 8 MB sample; bf16 compute, float32 parameters. 85M parameters
outside the (untied) embedding and head. The corpus is the GPU machine's Python sources:

    HQF_DATA_STORE=/tmp/store python -m train.token_lm --config configs/token_lm_gpu.py
    python -m studies.gpu_bootstrap   # pretrains it within a time budget, then the bootstrap arms

data.seq_len and data.batch_size count tokens (32 x 1024 = 32K tokens a step).
"""

from configs import token_lm


def get_config():
    c = token_lm.get_config()
    c.workdir = "runs/token_lm_gpu"
    c.compute_dtype = "bfloat16"
    c.tokenizer.update(dict(vocab_size=16384, min_frequency=2, sample_bytes=8 << 20))
    c.model.update(dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                        num_key_value_heads=12, max_position_embeddings=2048))
    c.data.update(dict(source="files", paths="/tmp/pysrc", seq_len=1024, batch_size=32))
    c.train.update(dict(steps=2000, lr=1e-3, warmup_steps=100, eval_every=500, eval_max_tokens=1 << 17,
                        ckpt_every=100000, log_every=50, sample_every=100000, keep=1))
    return c
