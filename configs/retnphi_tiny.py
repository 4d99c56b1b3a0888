"""RetNPhi on the framework's own token model: the model part of the bootstrap study (issue 3).

    python -m train.token_lm --config configs/token_lm_tiny.py      # writes runs/token_lm_tiny/hf
    python -m train.retnphi --config configs/retnphi_tiny.py [model.train_mode=full]

The checkpoint is the HF folder that `python -m train.token_lm` writes (config.json + safetensors +
tokenizer.json); it goes through exactly the import path of hqf_jax.nn.hf_loading. The model part is
read by hqf_jax.nn.retnphi.build_retnphi, which returns the model and the trainable filter.
Data/train parts follow configs/lm_tiny.py so bpb is comparable with the byte LM from scratch.
"""

import ml_collections

from configs import lm_tiny


def get_config():
    c = lm_tiny.get_config()
    c.task = "retnphi"  # lm_task.load_run rebuilds the model with hqf_jax.trainer.retnphi_task (eval.bpb, eval.generate)
    c.workdir = "runs/retnphi_tiny"
    c.model = ml_collections.ConfigDict(dict(
        checkpoint="runs/token_lm_tiny/hf",
        dtype="float32",  # compute dtype; bfloat16 on GPU
        param_dtype="float32",  # frozen base storage; bfloat16 halves it
        train_mode="lora",  # lora: frozen base + adapters, norms, byte tables | full: every parameter
        base_quant="",  # "nf4" / "int4" / ...: round the frozen base through that quantizer (QLoRA's 4-bit base)
        retnphi=dict(
            form="chunkwise", chunk_size=32, position="hf", rope_context=None, gamma_exp_first=-5.0,
            gamma_exp_last=-12.0, group_norm=True, gate="none", byte_init="tokens", remat=False, seed=0,
            extra_heads=0,  # byte heads for t+2..t+1+k (self-speculative); loss weight train.extra_heads_weight
        ),
        # targets "auto": every projection of the checkpoint's family (hqf_jax.nn.lora.FAMILY_TARGETS: q/k/v/o/gate/up/down
        # on Llama/Mistral/Qwen2, the fused qkv_proj/gate_up_proj + o_proj/down_proj on Phi-3); or name them
        lora=dict(targets=["auto"], rank=8, alpha=16.0, dropout=0.0, dora=False),
    ))
    return c
