"""The warm start of the Kolmogorov policy (issue 17 item 1): supervised (s -> code, code -> s) pairs from a simple
codec (hqf_jax/rl/codecs.py) in the C and D prompts, on top of a pretrained byte LM.

    python -m train.lm --config configs/lm_125m.py                                       # 1. pretrain
    python -m train.grpo --config configs/kolmogorov_warm.py rl.init_from=runs/lm_125m   # 2. warm start
    python -m train.grpo --config configs/kolmogorov_grpo.py rl.init_from=runs/kolmogorov_warm   # 3. GRPO

``mode="warmstart"`` makes train/grpo.py run the warm-start Task (hqf_jax/rl/warmstart.py) instead of GRPO;
the rl section gives the sources and the prompt/code widths the later GRPO run uses.
"""

import ml_collections

from configs import grpo


def get_config():
    c = grpo.get_config()
    c.mode = "warmstart"
    c.workdir = "runs/kolmogorov_warm"
    c.model.update(dict(d_model=768, num_layers=12, num_heads=6, qk_dim=768, v_dim=1536, ffn_dim=2560,
                        compute_dtype="bfloat16", chunk_size=64))
    c.train.update(dict(steps=600, lr=3e-4, warmup_steps=30, min_lr_ratio=0.1, weight_decay=0.0, log_every=20,
                        eval_every=200, ckpt_every=200, sample_every=10**9))
    c.rl.update(dict(source="corpus", source_len=96, code_budget=96, recon_budget=112, prompt_width=128))
    c.warm = ml_collections.ConfigDict(dict(sources_per_step=32, dict_size=22, shorthand_p=0.25, eval_sources=16))
    return c
