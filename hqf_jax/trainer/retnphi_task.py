"""RetNPhi on the shared loop: a pretrained HF decoder converted to a byte-level retention LM (issue 3).

The model part of the config goes to hqf_jax.nn.retnphi.build_retnphi, which returns the model and the
trainable filter (lora: adapters + norms + byte embedding + byte head, the base frozen and never in the
optimizer state or the checkpoint; full: every Param). Data, loss, bpb eval and samples are the byte
LM's (hqf_jax.trainer.lm_task), so valid_bpb is comparable with a byte model trained from scratch.

A run's config.json records the base checkpoint's sha256 (`base_sha256`); rebuilding the run
(lm_task.load_run, for eval.bpb / eval.generate) reloads the base from model.checkpoint and refuses
a folder whose weights changed since.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from hqf_jax.data.batching import WindowSampler
from hqf_jax.data.catalog import load_corpus
from hqf_jax.data.corpus import ByteCorpus
from hqf_jax.errors import CheckpointError, ConfigError
from hqf_jax.nn import hf_loading
from hqf_jax.nn.hf_decoder import HFConfigError, Linear
from hqf_jax.nn.lora import LoRAConfigError, LoRALinear
from hqf_jax.nn.retnphi import RetNPhi, RetNPhiConfigError, build_retnphi
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import Task

_USER_ERRORS = (RetNPhiConfigError, LoRAConfigError, HFConfigError, hf_loading.CheckpointError)


def base_sha256(cfg) -> str:
    """sha256 of the base checkpoint's safetensors (one clear line when the folder is wrong)."""
    try:
        return hf_loading.checkpoint_sha256(cfg.model.checkpoint)
    except hf_loading.CheckpointError as e:
        raise ConfigError(f"model.checkpoint: {e} (python -m train.token_lm writes one into <workdir>/hf)") from None


def build_model(cfg) -> tuple[RetNPhi, object]:
    """(model, trainable filter) of a RetNPhi config; checks the base against the run's recorded hash."""
    want = cfg.get("base_sha256")
    if want:
        got = base_sha256(cfg)
        if got != want:
            raise CheckpointError(f"the base checkpoint {cfg.model.checkpoint} changed since this run trained "
                                  f"(sha256 {got[:12]}... != {want[:12]}...); restore that folder or retrain")
    m = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
    base_quant = m.pop("base_quant", "")
    try:
        model, trainable = build_retnphi(m, progress=False)
    except _USER_ERRORS as e:
        raise ConfigError(str(e)) from None
    if base_quant:
        quantize_frozen_base(model, trainable, base_quant)
    return model, trainable


def quantize_frozen_base(model: RetNPhi, trainable, method: str) -> dict:
    """model.base_quant (e.g. "nf4", "int4"): every frozen dense weight round-trips through that quantizer
    (hqf_jax.quant), so the adapters train on the values a 4-bit base holds (QLoRA's base). The weights stay
    stored dequantized in model.param_dtype: the numerics of a quantized base, not its memory saving."""
    from hqf_jax import quant as Q

    trainable_paths = {p for p, _ in nnx.to_flat_state(nnx.state(model, trainable))}
    n = 0
    for path, mod in nnx.iter_modules(model):
        if isinstance(mod, Linear) and (*path, "weight") not in trainable_paths:
            w = mod.weight.get_value()
            try:
                w_q = Q.dequantize(Q.quantize(w, method)).astype(w.dtype)
            except Q.QuantConfigError as e:
                raise ConfigError(f"model.base_quant={method!r}: {e}") from None
            mod.weight.set_value(w_q)
            if isinstance(mod, LoRALinear) and mod.magnitude is not None:  # DoRA starts at the identity again
                mag = mod.magnitude.get_value()
                mod.magnitude.set_value(jnp.linalg.norm(w_q.astype(jnp.float32), axis=1).astype(mag.dtype))
            n += int(w.size)
    if n == 0:
        raise ConfigError(f"model.base_quant={method!r}: no frozen dense weight to quantize (train_mode=full?)")
    return {"method": method, "weights": n}


def check_same_base(workdir: str | Path, sha: str) -> None:
    """Refuse to resume a run folder whose recorded base differs from the configured one."""
    path = Path(workdir) / "config.json"
    if path.exists():
        old = json.loads(path.read_text()).get("base_sha256")
        if old and old != sha:
            raise CheckpointError(f"{workdir} was trained on another base (sha256 {old[:12]}... != {sha[:12]}...); "
                                  "use a new --workdir or the original model.checkpoint")


def param_counts(model: nnx.Module, trainable) -> dict[str, int]:
    def count(f):
        return sum(int(v.get_value().size) for _, v in nnx.to_flat_state(nnx.state(model, f)))

    total, train = count(nnx.Param), count(trainable)
    return {"params": total, "trainable": train, "frozen": total - train}


def flops_per_byte(model: RetNPhi, trainable, seq_len: int) -> float:
    """Training FLOPs per byte. Forward 2 x (dense + adapter) matmul params; backward to the activations the
    same again; weight gradients 2 x the *trainable* matmul params only (a frozen base costs no weight
    gradients, so LoRA steps are ~2/3 of full ones). Retention: 6 x the chunkwise multiply-adds per position
    (as lm_task.model_flops_per_byte). The byte embedding is a lookup (no FLOPs)."""
    trainable_paths = {p for p, _ in nnx.to_flat_state(nnx.state(model, trainable))}
    dense = lora = train = 0
    for path, m in nnx.iter_modules(model):
        if isinstance(m, Linear):
            n = int(m.weight.get_value().size)
            dense += n
            if (*path, "weight") in trainable_paths:
                train += n
            if isinstance(m, LoRALinear):
                n_ad = int(m.lora_A.get_value().size + m.lora_B.get_value().size)
                lora += n_ad
                train += n_ad
    c, r = model.cfg, model.rcfg
    chunk = min(r.chunk_size, seq_len)
    retention = c.num_layers * c.num_heads * (chunk * 2 * c.head_dim + 3 * c.head_dim * c.head_dim)
    return 4.0 * (dense + lora) + 2.0 * train + 6.0 * retention


def build_task(cfg, corpus: ByteCorpus | None = None) -> tuple[Task, ByteCorpus]:
    corpus = corpus or load_corpus(cfg.data)
    model, trainable = build_model(cfg)
    sampler = WindowSampler(corpus.reader("train"), cfg.data.seq_len, cfg.data.batch_size, cfg.train.seed)
    bytes_per_step = cfg.data.seq_len * cfg.data.batch_size
    task = Task(
        model=model,
        loss_fn=functools.partial(lm_task.next_byte_loss,
                                  extra_heads_weight=float(cfg.train.get("extra_heads_weight", 0.0))),
        batch_fn=sampler,
        eval_fn=lm_task.make_eval_fn(corpus.reader("valid"), cfg.data.seq_len, cfg.data.batch_size, cfg.train.eval_max_bytes),
        sample_fn=lm_task.make_sample_fn(cfg.train.sample_prompt, cfg.train.sample_len, cfg.train.seed),
        trainable=trainable,
        units_per_step=bytes_per_step,
        flops_per_step=flops_per_byte(model, trainable, cfg.data.seq_len) * bytes_per_step,
    )
    n = param_counts(model, trainable)
    print(f"[retnphi] {cfg.model.train_mode}: {n['params']:,} parameters, {n['trainable']:,} trainable "
          f"({100 * n['trainable'] / n['params']:.1f}%), base {cfg.model.checkpoint}; {corpus.summary()}")
    return task, corpus
