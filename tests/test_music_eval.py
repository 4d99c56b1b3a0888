"""Music eval pieces: per-byte scoring agrees with the trainer's eval, the suffix automaton's LCS is
exact, and the whole eval runs on a tiny trained run (MIDI written, shares in [0, 1])."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hqf_jax.scoring import byte_bits, continuations, music
from hqf_jax import cli
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import train
from tests.helpers import ROOT

TINY = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.qk_dim=32", "model.v_dim=64",
        "model.ffn_dim=64", "model.chunk_size=32", "data.seq_len=64", "data.batch_size=8", "data.num_tunes=12",
        "data.max_valid_tunes=8", "train.steps=30", "train.eval_every=10", "train.ckpt_every=10",
        "train.log_every=10", "train.sample_every=1000", "train.eval_max_bytes=2048"]


def brute_lcs(a: bytes, b: bytes) -> int:
    best = 0
    for i in range(len(a)):
        for j in range(i + best + 1, len(a) + 1):
            if a[i:j] in b:
                best = j - i
            else:
                break
    return best


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=40))
def test_suffix_automaton_lcs_is_exact(text, query):
    text, query = bytes(b % 4 + 97 for b in text), bytes(b % 4 + 97 for b in query)  # small alphabet: long matches
    assert music.SuffixAutomaton(text).longest_common_substring(query) == brute_lcs(query, text)


@pytest.fixture(scope="module")
def tiny_music_run(tmp_path_factory):
    cfg = cli.apply_overrides(cli.load_config_file(str(ROOT / "configs/music_chamber.py")),
                              TINY + ["chamber.interventions=ema", "chamber.ema_swap_at_end=True"])
    workdir = tmp_path_factory.mktemp("music")
    task, corpus = lm_task.build_task(cfg)
    train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg), progress=False)
    return workdir, task, corpus, cfg


def test_per_byte_bits_matches_the_trainer_eval(tiny_music_run):
    _, task, corpus, cfg = tiny_music_run
    stream = corpus.stream("valid")[: 64 * 8]
    bits = byte_bits.per_byte_bits(task.model, stream, 64, batch_size=3)  # batches padded, same numbers
    ref = lm_task.make_eval_fn(stream, 64, 8, len(stream))(task.model)["valid_bpb"]
    assert bits.shape == (len(stream),) and bits.mean() == pytest.approx(ref, rel=1e-5)
    one = byte_bits.doc_bits(task.model, [stream[:64].tobytes(), stream[64:100].tobytes()])
    np.testing.assert_allclose(one[0], bits[:64], rtol=1e-5)
    assert np.isnan(one[1, 36:]).all()


@pytest.mark.slow
def test_music_eval_end_to_end(tiny_music_run, tmp_path):
    workdir, _, _, _ = tiny_music_run
    r = music.measure(str(workdir), best=True, samples=4, length=120, out=str(tmp_path))
    assert r["step"] in (10, 20, 30)
    for k in ("sample_parse", "sample_meter", "real_parse", "real_meter", "sample_copies"):
        assert 0.0 <= r[k] <= 1.0
    assert r["real_parse"] == 1.0  # held-out tunes were chosen among those music21 parses
    assert r["midi_written"] == len(list((tmp_path / "midi").glob("*.mid")))
    assert (tmp_path / "samples.abc").read_text().startswith("X:1\nT:")
    assert r["model_bpb"] > 0 and r["xz | train"] < r["xz -9e"] + 1.0


def test_batched_continuation_of_uneven_prompts_matches_one_by_one_greedy(tiny_music_run):
    import jax
    import jax.numpy as jnp

    from hqf_jax.nn import generate

    _, task, _, _ = tiny_music_run
    prompts = [b"X:1\nT:The", b"X:1\nT:A longer title\nM:6/8\nL:1/8\nK:D\n"]
    got = continuations.continue_bytes(task.model, prompts, 12, seed=0, temperature=0.0, bucket=32)
    for p, g in zip(prompts, got):
        ids = generate.sample(task.model, jnp.asarray(generate.encode_prompt(p))[None], 12, jax.random.PRNGKey(0),
                              temperature=0.0)
        assert g == generate.decode(ids)
