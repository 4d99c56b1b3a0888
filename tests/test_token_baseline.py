"""The token-decoder baseline of the generation benches (hqf_jax.infer.token_baseline): the same-size decoder has the
byte LM's body weight count, and the bytes per token is what the trained BPE gives."""

import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from hqf_jax import cli
from hqf_jax.infer.token_baseline import decoder_config_like, measure_bytes_per_token
from hqf_jax.nn.hf_decoder import DecoderConfig, HFDecoderLM
from hqf_jax.nn.lora import count_params
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM
from hqf_jax.trainer.lm_task import model_config


def counts(cfg: RetNetConfig, vocab: int) -> tuple[int, int, dict]:
    """(token decoder params, byte LM params, the decoder's HF config), shapes only (nothing allocated)."""
    hf = decoder_config_like(cfg, vocab)
    dec = nnx.eval_shape(lambda: HFDecoderLM(DecoderConfig.from_hf(hf, dtype="bfloat16"), rngs=nnx.Rngs(0)))
    byte = nnx.eval_shape(lambda: RetNetLM(cfg, nnx.Rngs(0)))
    return count_params(dec, nnx.Param), count_params(byte, nnx.Param), hf


@pytest.mark.parametrize("config", ["configs/lm_tiny.py", "configs/lm_125m.py", "configs/lm_1b.py"])
def test_same_size_decoder_matches_the_byte_lm(config):
    cfg = model_config(cli.load_config_file(config).model)
    vocab = 32000
    n_tok, n_byte, hf = counts(cfg, vocab)
    d, layers = cfg.d_model, cfg.num_layers
    assert (hf["hidden_size"], hf["num_hidden_layers"], hf["intermediate_size"], hf["num_attention_heads"]) == (
        d, layers, cfg.ffn_dim, cfg.num_heads)
    # the bodies hold the same weights: the models differ by the embedding and head (vocab x d each) and the
    # retention's group-norm scales (v_dim a layer)
    assert n_tok - 2 * vocab * d == n_byte - 2 * cfg.vocab_size * d - layers * cfg.v_dim
    if config.endswith("lm_125m.py"):
        assert hf["head_dim"] == 256 and abs(n_byte - 128e6) < 2e6  # the ~128M byte LM (its config says so)


def test_a_step_reads_every_weight_but_the_input_embedding():
    """step_weight_bytes: the limit's weight bytes are the decoder's bf16 parameters less its (untied) input
    embedding table, of which a step gathers one row a sequence; a tied table is the head too, so it counts."""
    from hqf_jax.infer.token_baseline import step_weight_bytes

    cfg = model_config(cli.load_config_file("configs/lm_tiny.py").model)
    for tied in (False, True):
        hf = dict(decoder_config_like(cfg, 512), tie_word_embeddings=tied)
        dec = nnx.eval_shape(lambda: HFDecoderLM(DecoderConfig.from_hf(hf, dtype="bfloat16"), rngs=nnx.Rngs(0)))
        n = count_params(dec, nnx.Param)
        assert step_weight_bytes(dec) == 2 * (n if tied else n - 512 * cfg.d_model)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 8), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3))
def test_same_size_decoder_body_within_rounding(heads, layers, qk_mult, v_mult, ffn_mult):
    """Any shape: the attention width rounds to an even head_dim, so the bodies differ by at most 4 d heads a layer
    (beyond the group-norm scales)."""
    d = 8 * heads
    cfg = RetNetConfig(vocab_size=259, d_model=d, num_layers=layers, num_heads=heads, qk_dim=2 * heads * qk_mult,
                       v_dim=heads * v_mult, ffn_dim=16 * ffn_mult)
    n_tok, n_byte, hf = counts(cfg, 300)
    body_tok, body_byte = n_tok - 2 * 300 * d, n_byte - 2 * 259 * d - layers * cfg.v_dim
    assert hf["head_dim"] % 2 == 0 and abs(body_tok - body_byte) <= 4 * d * heads * layers


def test_bytes_per_token_measured_and_assumed(tmp_path):
    from hqf_jax.data.sources import stdlib_root

    for name in ("textwrap.py", "bisect.py", "heapq.py", "shlex.py"):
        (tmp_path / name).write_bytes(open(f"{stdlib_root()}/{name}", "rb").read())
    assert measure_bytes_per_token(None, 512, 0.05, 3.5) == (3.5, "assumed")
    one, how = measure_bytes_per_token(str(tmp_path), 256, 0.05, 3.5)  # the byte alphabet alone: a token a byte
    assert one == 1.0 and how.startswith("measured")
    more, _ = measure_bytes_per_token(str(tmp_path), 512, 0.05, 3.5)  # 256 merges of Python: tokens span bytes
    assert 1.5 < more < 8
