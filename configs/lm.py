"""The default: a ~1.4M-parameter RetNet byte LM on the Python standard library, sized for a 2-core CPU.

Its size, batch and learning rate come from a sweep at equal CPU time (docs/BENCHMARKS.md, "The default CPU
run"): in the ~22 minutes a 9M model needs for 400 steps on two cores, this model takes 800 steps of twice
the bytes and ends 0.19 bits per byte lower, below xz -9e on the same held-out bytes."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.workdir = "runs/lm"
    c.model = ml_collections.ConfigDict(dict(
        # arch: retnet | transformer (the standard decoder baseline, sized to the RetNet's parameters)
        arch="retnet", d_model=128, num_layers=4, num_heads=2, qk_dim=128, v_dim=256, ffn_dim=512,
        # form: auto = the Pallas kernel on a GPU, chunkwise elsewhere; attention_impl: auto = cuDNN on GPU in bf16
        position="xpos", rope_theta=10000.0, gamma_base=-5.0, form="auto", chunk_size=64,
        norm_eps=1e-6, compute_dtype="float32", attention_impl="auto",
        dropout=0.0,  # residual dropout on each block's retention and FFN outputs, in training only
        extra_heads=0,  # multi-byte prediction heads (bytes t+2..t+1+k) for self-speculative decoding
    ))
    c.data = ml_collections.ConfigDict(dict(
        source="stdlib", paths="", valid_fraction=0.05, max_files=0, seq_len=256, batch_size=32,
        # byte store folder ("" = $HQF_DATA_STORE or ~/.cache/hqf_jax/byte_store); data.source=hf: column, format
        store_dir="", text_column="text", hf_format="",
    ))
    c.train = ml_collections.ConfigDict(dict(
        steps=800, seed=0, grad_accum=1, lr=4e-3, warmup_steps=40, min_lr_ratio=0.1, weight_decay=0.1,
        b1=0.9, b2=0.98, grad_clip=1.0,
        log_every=10, eval_every=200, eval_max_bytes=65536, ckpt_every=100, keep=3,
        sample_every=200, sample_len=200, sample_prompt="def ",
        profile=False,
        patience=0,  # early stop after this many evals without a better valid_bpb (0 = off)
        resume_fallback=False,  # resume from the newest intact step when the newest is corrupt
        extra_heads_weight=0.3,  # loss weight of the extra heads' mean NLL (only with model.extra_heads > 0)
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return c
