"""Byte fidelity scores against hand-computed cases and a plain dynamic-programming reference."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hqf_jax.rl import fidelity as fd


def plain_levenshtein(a: bytes, b: bytes) -> int:
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


@pytest.mark.parametrize("a,b,want", [(b"kitten", b"sitting", 3), (b"flaw", b"lawn", 2), (b"", b"abc", 3),
                                      (b"abc", b"abc", 0), (b"abc", b"", 3), (b"ab", b"ba", 2)])
def test_levenshtein_hand(a, b, want):
    assert fd.levenshtein(a, b) == want == fd.levenshtein(b, a)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=12), st.binary(max_size=12))
def test_levenshtein_matches_plain_dp(a, b):
    assert fd.levenshtein(a, b) == plain_levenshtein(a, b)


def test_edit_fidelity():
    assert fd.edit_fidelity(b"kitten", b"sitting") == pytest.approx(1 - 3 / 7)
    assert fd.edit_fidelity(b"", b"") == 1.0
    assert fd.edit_fidelity(b"abc", b"xyz") == 0.0


def test_chrf_hand_cases():
    # n = 1..2, ref "abc", hyp "ab": P1 = 1, R1 = 2/3; P2 = 1, R2 = 1/2 -> chrP = 1, chrR = 7/12;
    # F2 = 5 chrP chrR / (4 chrP + chrR) = (35/12) / (55/12) = 7/11
    assert fd.chrf(b"abc", b"ab", n_order=2) == pytest.approx(7 / 11)
    # unigrams with counts: ref "aab", hyp "ab": match 2, P = 1, R = 2/3 -> F2 = (10/3) / (14/3) = 5/7
    assert fd.chrf(b"aab", b"ab", n_order=1) == pytest.approx(5 / 7)
    # beta = 1 is the harmonic mean of P and R: 2 * 1 * 2/3 / (5/3) = 4/5
    assert fd.chrf(b"aab", b"ab", n_order=1, beta=1.0) == pytest.approx(0.8)
    assert fd.chrf(b"hello world", b"hello world") == pytest.approx(1.0)
    assert fd.chrf(b"aaaa", b"bbbb") == 0.0
    assert fd.chrf(b"abc", b"") == 0.0 and fd.chrf(b"", b"") == 1.0
    # whitespace counts: "a b" vs "ab" is not perfect
    assert fd.chrf(b"a b", b"ab") < 1.0


def test_batch_and_kinds():
    s = [b"kitten", b"abc"]
    d = [b"sitting", b"abc"]
    np.testing.assert_allclose(fd.batch_fidelity(s, d, "edit"), [1 - 3 / 7, 1.0], rtol=1e-6)
    m = fd.batch_fidelity(s, d, "mean")
    np.testing.assert_allclose(m, [(fd.chrf(b"kitten", b"sitting") + 1 - 3 / 7) / 2, 1.0], rtol=1e-6)
    with pytest.raises(fd.FidelityError, match="use 'chrf'"):
        fd.fidelity(b"a", b"a", "bleu")
    with pytest.raises(fd.FidelityError, match="aligned"):
        fd.batch_fidelity([b"a"], [])
