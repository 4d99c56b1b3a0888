"""The framework's own pretrained token model (issue 3, point 5): byte-level BPE + Llama-style decoder.

    python -m train.token_lm --config configs/token_lm.py

Writes <workdir>/hf (config.json + model.safetensors + tokenizer.json), the checkpoint RetNPhi converts.
The model part holds transformers.LlamaConfig fields (vocab size and special ids come from the tokenizer);
data.seq_len and data.batch_size count tokens.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "token_lm"
    c.workdir = "runs/token_lm"
    c.compute_dtype = "float32"  # the decoder's compute dtype (bfloat16 on a GPU); parameters stay float32
    c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=4096, min_frequency=2, sample_bytes=0))  # 0: all train docs
    c.model = ml_collections.ConfigDict(dict(
        hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
        head_dim=0,  # 0: hidden_size // num_attention_heads
        max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        hidden_act="silu", initializer_range=0.02, attention_bias=False, mlp_bias=False,
    ))
    c.data = ml_collections.ConfigDict(dict(
        source="stdlib", paths="", valid_fraction=0.05, max_files=0, seq_len=256, batch_size=16,
        # byte store folder ("" = $HQF_DATA_STORE or ~/.cache/hqf_jax/byte_store); data.source=hf: column, format
        store_dir="", text_column="text", hf_format="",
    ))
    c.train = ml_collections.ConfigDict(dict(
        steps=2000, seed=0, lr=2e-3, warmup_steps=100, min_lr_ratio=0.1, weight_decay=0.1,
        b1=0.9, b2=0.98, grad_clip=1.0,
        log_every=10, eval_every=250, eval_max_tokens=32768, ckpt_every=250, keep=3,
        sample_every=500, sample_len=64, sample_prompt="def ",
        patience=0, resume_fallback=False,  # as in configs/lm.py
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return c
