"""The origin code's RetNPhi recipe (the notes' public repository), as a config over configs/retnphi_gpu.py:
DoRA r32 on o_proj only; randomly initialised byte tables; only the post-attention norms (and the byte
tables) thawed; decays 1/32 .. 1/512 (gamma = 1 - 2^e, e from -5 to -9); a 4-bit base.

The 4-bit base: the frozen weights round-trip through NF4 (group 64) before training (model.base_quant,
hqf_jax.trainer.retnphi_task.quantize_frozen_base), so the adapters see the values a 4-bit base holds; they
stay stored dequantized (float32 here), so the memory saving of a packed 4-bit base is not reproduced.
alpha = 2 x rank as in the project's configs (the origin's alpha is not recorded in the notes).
configs/retnphi_origin_tiny.py applies the same recipe to configs/retnphi_tiny.py.
"""

from configs import retnphi_gpu


def origin_recipe(c, rank: int = 32):
    with c.unlocked():
        c.model.base_quant = "nf4"
        c.model.retnphi.update(dict(byte_init="random", gamma_exp_first=-5.0, gamma_exp_last=-9.0,
                                    trainable=["post_attention_layernorm", "byte_embed", "byte_head"]))
        c.model.lora.update(dict(targets=["o_proj"], rank=rank, alpha=2.0 * rank, dora=True))
    return c


def get_config():
    c = origin_recipe(retnphi_gpu.get_config())
    c.workdir = "runs/retnphi_origin"
    return c
