"""The warm start of the Kolmogorov policy (issue 17 item 1): supervised pairs in the prompts of the roles,

    C row:  BOS <c>SOURCE</c> CODE EOS        (loss on CODE EOS)
    D row:  BOS <d>CODE</d> SOURCE EOS        (loss on SOURCE EOS)

with CODE from a simple codec (hqf_jax.rl.codecs: dictionary substitution of frequent words, run-length, and
with probability ``shorthand_p`` a lossy shorthand), so GRPO starts from a policy whose codes decode.

``build_warmstart_task`` is a Task of the shared loop (train/grpo.py --mode warmstart); ``warmstart_batch`` and
``completion_loss`` are its pieces; ``roundtrip`` measures what the warm start is for: C's greedy code, D's
greedy reconstruction, chrF against the source, and whether the code decodes exactly under the codec.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hqf_jax.errors import ConfigError
from hqf_jax.ops.constants import BOS_ID, EOS_ID, PAD_ID
from hqf_jax.rl.codecs import Codec, build_dictionary
from hqf_jax.rl.engine_rollout import engine_rollout, supports_engine
from hqf_jax.rl.fidelity import chrf
from hqf_jax.rl.kolmogorov import compressor_prompt, decompressor_prompt
from hqf_jax.rl.rollout import SampleConfig, completion_bytes, encode_prompts, rollout
from hqf_jax.rl.sources import SourceFn, make_source
from hqf_jax.trainer.loop import Task

LN2 = float(np.log(2.0))


def pair_rows(source: bytes, code: bytes) -> list[tuple[bytes, bytes]]:
    """(prompt, completion) of the C row and of the D row for one (source, code) pair."""
    return [(compressor_prompt(source), code), (decompressor_prompt(code), source)]


def encode_pairs(pairs: list[tuple[bytes, bytes]], width: int) -> dict[str, np.ndarray]:
    """Rows BOS prompt completion EOS, PAD after, cut at ``width`` + 1 tokens -> inputs/targets/mask (N, width)."""
    toks = np.full((len(pairs), width + 1), PAD_ID, np.int32)
    mask = np.zeros((len(pairs), width + 1), bool)
    for i, (p, c) in enumerate(pairs):
        row = [BOS_ID, *p, *c, EOS_ID][: width + 1]
        toks[i, :len(row)] = row
        mask[i, 1 + len(p):len(row)] = True  # the completion and its EOS are scored
    return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "mask": mask[:, 1:]}


def warmstart_batch(sources: list[bytes], codec: Codec, rng: np.random.Generator, width: int,
                    shorthand_p: float = 0.0) -> dict[str, np.ndarray]:
    pairs = []
    for s in sources:
        pairs += pair_rows(s, codec.encode(s, shorthand_first=bool(rng.random() < shorthand_p)))
    return encode_pairs(pairs, width)


def completion_loss(model, batch, rng):
    """Mean NLL (nats) over the completion tokens (the mask); bpb of those tokens as a metric."""
    del rng
    logits = model(batch["inputs"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"])
    m = batch["mask"].astype(jnp.float32)
    loss = (nll * m).sum() / jnp.maximum(m.sum(), 1.0)
    return loss, {"completion_bpb": loss / LN2}


def greedy(policy: nnx.Module, prompts: list[bytes], max_new: int, width: int) -> list[bytes]:
    """Greedy completions, through the generation engine when the policy is a retention RetNetLM."""
    toks, lens = encode_prompts(prompts, width=width)
    cfg = SampleConfig(max_new_tokens=max_new, top_k=1)
    roll_fn = engine_rollout if supports_engine(policy) else rollout
    return completion_bytes(roll_fn(policy, toks, lens, jax.random.PRNGKey(0), cfg))


def roundtrip(policy: nnx.Module, sources: list[bytes], codec: Codec, code_budget: int, recon_budget: int,
              width: int) -> dict[str, float]:
    """Greedy C then greedy D on ``sources``: chrF(s, D(C(s))), code/source length, and the fraction of codes
    that the codec decodes back to s exactly (the policy speaks the codec)."""
    codes = greedy(policy, [compressor_prompt(s) for s in sources], code_budget, width)
    recons = greedy(policy, [decompressor_prompt(c) for c in codes], recon_budget, width)
    return {"fidelity": float(np.mean([chrf(s, d) for s, d in zip(sources, recons)])),
            "ratio": float(np.mean([len(c) / max(len(s), 1) for s, c in zip(sources, codes)])),
            "codec_exact": float(np.mean([codec.decode(c) == s for s, c in zip(sources, codes)])),
            "codec_fidelity": float(np.mean([chrf(s, codec.decode(c)) for s, c in zip(sources, codes)]))}


def codec_for(cfg, source: SourceFn) -> Codec:
    """The dictionary: the most byte-saving words of 2048 sources drawn with a fixed seed."""
    sample = b"\n".join(source(np.random.default_rng([cfg.train.seed, 7]), 2048))
    return Codec(build_dictionary(sample, int(cfg.warm.dict_size)))


def build_warmstart_task(cfg, model: nnx.Module) -> tuple[Task, Codec]:
    """The warm start as a Task: batches of C and D pairs from rl.source, completion loss, round-trip eval."""
    if "warm" not in cfg:
        raise ConfigError("the warm start needs a `warm` section (configs/kolmogorov_warm.py)")
    source = make_source(cfg.rl, cfg.get("data"), "train")
    codec = codec_for(cfg, source)
    width = int(cfg.rl.prompt_width) + max(int(cfg.rl.code_budget), int(cfg.rl.recon_budget))
    n = int(cfg.warm.sources_per_step)

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([cfg.train.seed, 11, step])
        return warmstart_batch(source(rng, n), codec, rng, width, float(cfg.warm.shorthand_p))

    held = make_source(cfg.rl, cfg.get("data"), "valid" if cfg.rl.source == "corpus" else "train")
    eval_sources = held(np.random.default_rng([cfg.train.seed, 2**31 - 1]), int(cfg.warm.eval_sources))

    def eval_fn(m):
        r = roundtrip(m, eval_sources, codec, cfg.rl.code_budget, cfg.rl.recon_budget, cfg.rl.prompt_width)
        return {f"warm_{k}": v for k, v in r.items()}

    task = Task(model=model, loss_fn=completion_loss, batch_fn=batch_fn, eval_fn=eval_fn,
                units_per_step=2 * n, unit_name="pairs", best_metric="warm_fidelity", best_mode="max")
    return task, codec
