"""RetNPhi on the GPU-pretrained 110M token model (configs/token_lm_gpu.py), the project's recipe (issue 18):
LoRA r16 on all seven projections, every norm trained, byte tables from the token embeddings, decays
2^-5 .. 2^-12. bf16 compute, float32 parameters. Byte data: the GPU machine's Python sources.

    python -m studies.gpu_bootstrap      # pretrain -> convert -> train -> score, one process

configs/retnphi_origin.py is the origin code's recipe on the same base.
"""

from configs import retnphi


def get_config():
    c = retnphi.get_config()
    c.workdir = "runs/retnphi_gpu"
    c.model.update(dict(checkpoint="runs/gpu_bootstrap/token/hf", dtype="bfloat16", param_dtype="float32"))
    c.model.retnphi.chunk_size = 128
    c.model.lora.update(dict(rank=16, alpha=32.0))
    c.data.update(dict(source="files", paths="/tmp/pysrc", seq_len=1024, batch_size=32))
    c.train.update(dict(steps=1000, lr=1e-3, warmup_steps=50, eval_every=100, eval_max_bytes=1 << 18,
                        ckpt_every=100000, log_every=25, sample_every=100000, keep=1))
    return c
