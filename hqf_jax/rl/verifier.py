"""Model-based verifiers for the Kolmogorov compressor (issue 17 item 4), beside chrF on bytes.

:class:`GainVerifier` scores a reconstruction d of s by how much a *frozen* byte LM's code length for s shrinks
when it reads d first:

    gain(s, d) = clip(1 - L(s | <v>d</v>) / L(s | <v></v>), 0, 1),    L(s | x) = -sum_t log p(s_t | x s_<t) (+ EOS)

1 - (bits of s left after seeing d) / (bits of s alone): near 1 when d lets the model predict s (d = s and the
model copies), 0 when d tells it nothing. Unlike chrF it credits a paraphrase the model understands and it
cannot be met by n-gram overlap alone. The frozen model is the pretrained LM (not the policy being trained).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.ops.constants import EOS_ID, PAD_ID
from hqf_jax.rl.kolmogorov import verifier_prompt
from hqf_jax.rl.rollout import encode_prompts, teacher_forced_logprobs


class GainVerifier:
    """Fraction of s's code length under a frozen LM that d saves (see module docstring), in [0, 1]."""

    def __init__(self, model: nnx.Module, width: int):
        self.model, self.width = model, width
        self._fn = nnx.jit(lambda m, t: teacher_forced_logprobs(m, t))

    def nll(self, prefixes: Sequence[bytes], sources: Sequence[bytes]) -> np.ndarray:
        """-sum log p(s + EOS | BOS prefix) per row (nats)."""
        rows = [p + s for p, s in zip(prefixes, sources)]
        toks, lens = encode_prompts(rows, width=self.width - 1)
        toks = np.concatenate([toks, np.full((len(rows), 1), PAD_ID, np.int32)], axis=1)
        toks[np.arange(len(rows)), lens] = EOS_ID
        lp = np.asarray(self._fn(self.model, jnp.asarray(toks)))
        return np.array([-lp[i, 1 + len(p):1 + len(p) + len(s) + 1].sum() for i, (p, s) in
                         enumerate(zip(prefixes, sources))], np.float64)

    def __call__(self, sources: Sequence[bytes], recons: Sequence[bytes]) -> np.ndarray:
        cond = self.nll([verifier_prompt(d) for d in recons], sources)
        free = self.nll([verifier_prompt(b"")] * len(sources), sources)
        return np.clip(1.0 - cond / np.maximum(free, 1e-9), 0.0, 1.0).astype(np.float32)
