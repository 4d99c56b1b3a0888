"""RetNPhi on microsoft/Phi-3.5-mini-instruct (3.8B) on one 80 GB GPU: frozen bf16 base, LoRA r16 on the
fused projections, per-block remat (studies/phi35_plan.py: ~20 GB at 16 x 2048 bytes).

    python -m train.retnphi --config configs/retnphi_phi35.py model.checkpoint=/path/to/Phi-3.5-mini-instruct

The folder needs config.json + *.safetensors + the tokenizer files (byte rows come from the token embeddings).
"""

from configs import lm, retnphi_tiny


def get_config():
    c = lm.get_config()
    c.task = "retnphi"
    c.workdir = "runs/retnphi_phi35"
    c.model = retnphi_tiny.get_config().model
    c.model.update(dict(checkpoint="checkpoints/Phi-3.5-mini-instruct", dtype="bfloat16", param_dtype="bfloat16"))
    c.model.retnphi.update(dict(chunk_size=128, remat=True))
    c.model.lora.update(dict(targets=["auto"], rank=16, alpha=32.0))  # auto on phi3: qkv_proj, o_proj, gate_up_proj, down_proj
    c.data.update(dict(seq_len=2048, batch_size=16))
    c.train.update(dict(steps=2000, lr=1e-3, warmup_steps=100, eval_every=250, ckpt_every=250, eval_max_bytes=1 << 18))
    return c
