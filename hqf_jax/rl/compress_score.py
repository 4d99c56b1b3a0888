"""Held-out compression by the Kolmogorov policy beside classical coders, in bits per byte (library side of
eval/kolmogorov_eval.py and studies/kolmogorov_gpu.py).

* zlib -9 and lzma 9e as raw streams (no container headers), per source and over the concatenated sources;
* the arithmetic-coding bound of a byte LM: the cross-entropy of BOS s EOS under the model (lossless);
* the policy: for each source, the shortest of its sampled codes whose reconstruction reaches fidelity tau,
  else the raw source (8 bits per byte) - a lossy rate at fidelity >= tau.
"""

from __future__ import annotations

import dataclasses
import lzma
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.ops.constants import EOS_ID
from hqf_jax.rl import kolmogorov as kg
from hqf_jax.rl.rollout import encode_prompts, teacher_forced_logprobs

LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def zlib_raw(data: bytes) -> int:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return len(c.compress(data) + c.flush())


def lzma_raw(data: bytes) -> int:
    return len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS))


@nnx.jit
def _tf_logprobs(model, tokens):
    return teacher_forced_logprobs(model, tokens)


def ac_bound_bytes(model, sources: list[bytes], batch: int = 16) -> np.ndarray:
    """Cross-entropy of each s (BOS s EOS) under the model, in bytes."""
    width = max(len(s) for s in sources) + 2
    out = []
    for i in range(0, len(sources), batch):
        chunk = sources[i:i + batch]
        toks, lens = encode_prompts(chunk, width=width - 1)
        toks = np.concatenate([toks, np.full((len(chunk), 1), 0, np.int32)], axis=1)
        toks[np.arange(len(chunk)), lens] = EOS_ID
        lp = np.asarray(_tf_logprobs(model, jnp.asarray(toks)))
        for j, s in enumerate(chunk):
            out.append(-lp[j, 1:len(s) + 2].sum() / np.log(2.0) / 8.0)
    return np.array(out)


def baselines_bpb(sources: list[bytes]) -> dict[str, float]:
    total = sum(len(s) for s in sources)
    stream = b"".join(sources)
    return {"zlib -9, per source": 8 * sum(zlib_raw(s) for s in sources) / total,
            "lzma 9e, per source": 8 * sum(lzma_raw(s) for s in sources) / total,
            "zlib -9, one stream": 8 * zlib_raw(stream) / total,
            "lzma 9e, one stream": 8 * lzma_raw(stream) / total}


def policy_bpb(policy, sources: list[bytes], kcfg: kg.KolmogorovConfig, samples: int, key: jax.Array,
               taus=(0.5, 0.7, 0.9), verifier=None, batch: int = 8) -> dict:
    """``samples`` sampled codes per source (no constraints, D as in kcfg); per tau: bits per byte with raw
    fallback, success fraction, bits per byte over successes only; mean best chrF; mean model score (gain) of the
    best-chrF code when a verifier is given."""
    cfg = dataclasses.replace(kcfg, pattern="cdv", group_size=max(samples, 2), n_inject=0, n_ban=0,
                              fidelity="chrf")
    per = []  # per source: [(code, chrf, recon)]
    for i in range(0, len(sources), batch):
        chunk = sources[i:i + batch]
        ep = kg.run_episode(policy, chunk, jax.random.fold_in(key, i), cfg)
        fid = ep.scores["fidelity"]
        for j in range(len(chunk)):
            rows = range(j * cfg.group_size, (j + 1) * cfg.group_size)
            per.append([(ep.samples[r][1], float(fid[r]), ep.samples[r][2]) for r in rows])
    total = sum(len(s) for s in sources)
    out = {"mean_best_chrf": float(np.mean([max(f for _, f, _ in cs) for cs in per])),
           "mean_code_ratio": float(np.mean([np.mean([len(c) for c, _, _ in cs]) / len(s)
                                             for s, cs in zip(sources, per)]))}
    for tau in taus:
        sizes, ok = [], []
        for s, cs in zip(sources, per):
            good = [len(c) for c, f, _ in cs if f >= tau]
            ok.append(bool(good))
            sizes.append(min(good) if good else len(s))
        succ = sum(len(s) for s, o in zip(sources, ok) if o)
        out[f"bpb@{tau:g}"] = 8 * sum(sizes) / total
        out[f"success@{tau:g}"] = float(np.mean(ok))
        out[f"bpb_success_only@{tau:g}"] = (8 * sum(z for z, o in zip(sizes, ok) if o) / succ) if succ else None
    if verifier is not None:
        best = [max(cs, key=lambda x: x[1])[2] for cs in per]
        out["mean_gain_of_best"] = float(np.mean(verifier(sources, best)))
    out["examples"] = [{"s": s.decode("latin-1"), "code": max(cs, key=lambda x: x[1])[0].decode("latin-1"),
                        "recon": max(cs, key=lambda x: x[1])[2].decode("latin-1")}
                       for s, cs in list(zip(sources, per))[:3]]
    return out
