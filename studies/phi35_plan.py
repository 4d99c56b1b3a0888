"""Phi-3.5-mini on paper: parameters, adapter size and the one-GPU memory plan of RetNPhi training.

Everything is computed from the public config.json values (tests/fixtures/phi35_config.json) through the
real modules built abstractly (nnx.eval_shape: shapes only, no memory): the HF decoder, its RetNPhi
conversion and the LoRA wrapping. No weights are needed.

    python -m studies.phi35_plan                       # defaults: LoRA rank 16 on qkv/o/gate_up/down
    python -m studies.phi35_plan --rank 8 --batch 8 --seq-len 4096 --no-remat

Memory model (bytes, one GPU, bf16 compute):
  frozen base        frozen params x 2 (bf16; token embedding and head are dropped by the conversion)
  trainable state    trainable params x 16 (float32 param + grad + Adam mu + nu)
  activations        with per-block remat: every block's input (B T D x 2) kept for the backward pass, plus
                     one block's working set while it is recomputed; without remat: every block's working set
  block working set  per token: norms/residuals/projections in bf16, retention output and GroupNorm in float32,
                     chunkwise retention internals (intra-chunk scores H C x 4, chunk states H dk dv / C x 4)
  logits             B T V x 4 x 2 (float32 logits and their gradient)
The plan reserves a fraction of the card (--headroom) for XLA workspace and fragmentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os

from flax import nnx

from hqf_jax.nn.hf_decoder import DecoderConfig
from hqf_jax.nn.hf_loading import abstract_decoder
from hqf_jax.nn.lora import LoRAConfig, LoRAParam, count_params, frozen_filter
from hqf_jax.nn.retnphi import RetNPhiConfig, abstract_retnphi
from hqf_jax.ops.constants import BYTE_VOCAB_SIZE
from hqf_jax.report import write_report

FIXTURE = os.path.join(os.path.dirname(__file__), os.pardir, "tests", "fixtures", "phi35_config.json")
GB = 1e9
CLAIMED_ADAPTER_MB = 50.0


@dataclasses.dataclass(frozen=True)
class Plan:
    base_params: int
    converted_params: int
    frozen_params: int
    trainable_params: int
    lora_params: int
    byte_table_params: int
    norm_params: int
    adapter_tensors: int
    adapter_bytes_f32: int
    adapter_bytes_bf16: int
    memory: dict
    fits: bool
    max_batch: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _adapter_file_bytes(shapes: list[tuple[str, tuple]], itemsize: int) -> int:
    """Exact safetensors size: 8-byte length + JSON header (padded to 8) + tensor bytes."""
    header, offset = {"__metadata__": {"format": "hqf-adapter-v1"}}, 0
    for name, shape in shapes:
        n = math.prod(shape) * itemsize
        header[name] = {"dtype": "F32" if itemsize == 4 else "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":"))
    return 8 + len(text) + (-len(text)) % 8 + offset


def block_bytes_per_token(cfg: DecoderConfig, rank: int, n_targets: int, chunk: int) -> float:
    """Activation bytes one block keeps per token for its backward pass (bf16 compute)."""
    d, f, h, kv, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    bf16 = 2 * (
        d  # input RMSNorm output
        + (h + 2 * kv) * hd  # q, k, v projections
        + (h + kv) * hd  # q, k after RoPE
        + 2 * h * hd  # k, v repeated over the GQA groups
        + h * hd  # retention output in compute dtype (o_proj input)
        + d  # residual after retention
        + d  # post-attention RMSNorm output
        + 2 * f  # gate_up projection
        + 2 * f  # silu(gate) and silu(gate) * up
        + d  # down projection output
        + n_targets * rank  # LoRA A x
    )
    f32 = 4 * (2 * h * hd + h * chunk + h * hd * hd / chunk)  # retention out + GroupNorm; chunk scores; chunk states
    return bf16 + f32


def memory_plan(cfg: DecoderConfig, frozen: int, trainable: int, *, batch: int, seq_len: int, rank: int,
                n_targets: int, chunk: int, remat: bool) -> dict:
    tokens = batch * seq_len
    per_block = block_bytes_per_token(cfg, rank, n_targets, chunk)
    if remat:
        activations = tokens * (cfg.num_layers * cfg.hidden_size * 2 + per_block)
    else:
        activations = tokens * cfg.num_layers * per_block
    mem = {
        "frozen_base_bf16": frozen * 2,
        "trainable_state_f32_adam": trainable * 16,
        "activations": activations,
        "logits_and_grad": tokens * BYTE_VOCAB_SIZE * 4 * 2,
    }
    mem["total"] = sum(mem.values())
    return mem


def plan(config_path: str = FIXTURE, lora: LoRAConfig = LoRAConfig(), rcfg: RetNPhiConfig = RetNPhiConfig(),
         *, batch: int = 16, seq_len: int = 2048, remat: bool = True, gpu_gb: float = 80.0,
         headroom: float = 0.1) -> Plan:
    cfg = DecoderConfig.from_json(config_path, dtype="bfloat16")
    lora = lora.resolved(cfg.family)  # "auto" -> the family's projection names
    base = count_params(abstract_decoder(cfg), nnx.Param)
    model = abstract_retnphi(cfg, rcfg, lora)
    filt = rcfg.trainable_filter()
    trainable = count_params(model, filt)
    frozen = count_params(model, frozen_filter(filt))
    lora_n = count_params(model, LoRAParam)
    shapes = [(".".join(map(str, p)), tuple(v.get_value().shape)) for p, v in nnx.to_flat_state(nnx.state(model, filt))]
    byte_tables = 2 * BYTE_VOCAB_SIZE * cfg.hidden_size
    kw = dict(rank=lora.rank, n_targets=len(lora.targets), chunk=rcfg.chunk_size, remat=remat)
    mem = memory_plan(cfg, frozen, trainable, batch=batch, seq_len=seq_len, **kw)
    budget = gpu_gb * GB * (1 - headroom)
    max_batch = 0
    while memory_plan(cfg, frozen, trainable, batch=max_batch + 1, seq_len=seq_len, **kw)["total"] <= budget:
        max_batch += 1
    return Plan(
        base_params=base,
        converted_params=frozen + trainable,
        frozen_params=frozen,
        trainable_params=trainable,
        lora_params=lora_n,
        byte_table_params=byte_tables,
        norm_params=trainable - lora_n - byte_tables,
        adapter_tensors=len(shapes),
        adapter_bytes_f32=_adapter_file_bytes(shapes, 4),
        adapter_bytes_bf16=_adapter_file_bytes(shapes, 2),
        memory=mem,
        fits=mem["total"] <= budget,
        max_batch=max_batch,
    )


def report(p: Plan, lora: LoRAConfig, batch: int, seq_len: int, remat: bool, gpu_gb: float) -> str:
    lines = [
        f"Phi-3.5-mini -> RetNPhi, LoRA rank {lora.rank} alpha {lora.alpha} on {', '.join(lora.targets)}",
        f"  base decoder params        {p.base_params:>15,}",
        f"  converted (byte) params    {p.converted_params:>15,}   (token embedding + head dropped)",
        f"  frozen                     {p.frozen_params:>15,}",
        f"  trainable                  {p.trainable_params:>15,}   ({100 * p.trainable_params / p.converted_params:.2f}%)",
        f"    LoRA                     {p.lora_params:>15,}",
        f"    byte embedding + head    {p.byte_table_params:>15,}",
        f"    norms (RMS + GroupNorm)  {p.norm_params:>15,}",
        f"  adapter file  float32      {p.adapter_bytes_f32 / 2**20:>12.1f} MiB  ({p.adapter_tensors} tensors)",
        f"  adapter file  bfloat16     {p.adapter_bytes_bf16 / 2**20:>12.1f} MiB  (claim: ~{CLAIMED_ADAPTER_MB:.0f} MB)",
        f"memory plan, one {gpu_gb:.0f} GB GPU, batch {batch} x {seq_len} bytes, remat {'per block' if remat else 'off'}:",
    ]
    for k, v in p.memory.items():
        lines.append(f"  {k:<26} {v / GB:>10.2f} GB")
    lines.append(f"  fits: {p.fits}; largest batch at {seq_len} bytes: {p.max_batch}")
    return "\n".join(lines)


def main(argv=None) -> Plan:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=FIXTURE, help="an HF config.json (default: the Phi-3.5-mini fixture)")
    ap.add_argument("--rank", type=int, default=LoRAConfig.rank)
    ap.add_argument("--alpha", type=float, default=LoRAConfig.alpha)
    ap.add_argument("--targets", default=",".join(LoRAConfig.targets), help="'auto' (the family's projections) or names")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=RetNPhiConfig.chunk_size)
    ap.add_argument("--no-remat", action="store_true")
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--out", default="runs/studies/phi35_plan", help="folder for table.md and results.json")
    args = ap.parse_args(argv)
    lora = LoRAConfig(targets=tuple(args.targets.split(",")), rank=args.rank, alpha=args.alpha)
    rcfg = RetNPhiConfig(chunk_size=args.chunk, byte_init="random")
    p = plan(args.config, lora, rcfg, batch=args.batch, seq_len=args.seq_len, remat=not args.no_remat,
             gpu_gb=args.gpu_gb)
    text = report(p, lora.resolved(DecoderConfig.from_json(args.config).family), args.batch, args.seq_len, not args.no_remat, args.gpu_gb)
    print(text)
    print(f"[study] -> {write_report(args.out, text, p)}")
    return p


if __name__ == "__main__":
    main()
