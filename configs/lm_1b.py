"""A ~0.96B-parameter RetNet byte LM for FSDP across GPUs (bf16 compute, float32 params and AdamW state:
~15 GiB of parameters, gradients and optimizer state before activations)."""

from configs import lm_125m


def get_config():
    c = lm_125m.get_config()
    c.workdir = "runs/lm_1b"
    c.model.update(dict(d_model=2048, num_layers=14, num_heads=16, qk_dim=2048, v_dim=4096, ffn_dim=5632))
    c.data.update(dict(seq_len=2048, batch_size=16))
    c.mesh.update(dict(data=1, fsdp=-1))
    return c
