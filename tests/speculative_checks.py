"""The distribution check shared by the self-speculative decoding tests of the byte LM (tests/test_speculative.py)
and of RetNPhi (tests/test_retnphi_spec.py): sampled bytes at temperature 1 against plain sampling, by a
chi-square test per position over many seeds, with a check that the test has the power to tell temperature 1.6
apart."""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2_contingency

from hqf_jax.infer.speculative import speculative_generate


def _table(a, b, min_count=10):
    """2 x K contingency table of byte counts; rare bytes pooled into one column."""
    values = np.union1d(a, b)
    ca = np.array([(a == v).sum() for v in values])
    cb = np.array([(b == v).sum() for v in values])
    common = (ca + cb) >= min_count
    return np.array([np.append(ca[common], ca[~common].sum()), np.append(cb[common], cb[~common].sum())])


def check_sampling_equals_plain(engine, rows: int = 1500, n: int = 4, prompt: bytes = b"the ") -> None:
    prompts = [prompt] * rows
    spec, stats = speculative_generate(engine, prompts, n, seed=np.arange(rows), temperature=1.0)
    plain = engine.generate_ids(prompts, n, seed=np.arange(rows) + 10**6, temperature=1.0)
    hot = engine.generate_ids(prompts, n, seed=np.arange(rows) + 2 * 10**6, temperature=1.6)
    assert stats["bytes_per_verify"] > 1.01  # drafts were accepted, so the accepted branch is tested too
    for pos in range(1, n):  # byte 0 comes from the prefill; 1.. from verified drafts and residuals
        p_same = chi2_contingency(_table(spec[:, pos], plain[:, pos]))[1]
        assert p_same > 1e-3, (pos, p_same)
    # the test has power: a different temperature is told apart at the same sample size
    assert chi2_contingency(_table(spec[:, 1], hot[:, 1]))[1] < 1e-3
