"""RetNPhi conversion: forms agree, weights are reused, byte rows come from the tokenizer, adapters apply."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hqf_jax.nn.hf_decoder import DecoderConfig, HFDecoderLM, Linear
from hqf_jax.nn.lora import FAMILY_TARGETS, LoRAConfig, LoRAConfigError, apply_lora, count_params, frozen_filter
from hqf_jax.nn.retnphi import (
    RetNPhi,
    RetNPhiConfig,
    RetNPhiConfigError,
    retention_gammas,
    token_bytes,
)
from hqf_jax.ops.constants import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID


def _decoder(family="phi3", hidden=32, heads=4, kv=2, seed=0, **extra):
    hf = dict(
        model_type=family,
        vocab_size=60,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=64,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        **extra,
    )
    return HFDecoderLM(DecoderConfig.from_hf(hf), rngs=nnx.Rngs(seed))


def _bytes(b=2, t=11, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, BYTE_VOCAB_SIZE, (b, t)), jnp.int32)


_forward = nnx.jit(lambda m, t, form: m(t, form=form), static_argnames="form")
_prefill = nnx.jit(lambda m, t, form: m(t, m.init_state(t.shape[0]), form=form, return_state=True), static_argnames="form")


@nnx.jit
def _scan_steps(model, toks, state):
    """model.step over every column of toks in one lax.scan: (logits (B,T,V), state)."""

    def body(state, tok):
        logits, state = model.step(tok, state)
        return state, logits

    state, logits = jax.lax.scan(body, state, toks.T)
    return jnp.moveaxis(logits, 0, 1), state


def _recurrent(model, toks):
    return _scan_steps(model, toks, model.init_state(toks.shape[0]))[0]


@pytest.mark.parametrize(
    "family,rcfg",
    [
        ("phi3", RetNPhiConfig(byte_init="random", chunk_size=4)),
        ("qwen2", RetNPhiConfig(byte_init="random", chunk_size=4, gate="swish", position="xpos")),
        ("llama", RetNPhiConfig(byte_init="random", chunk_size=8, group_norm=False, position="none")),
    ],
)
def test_parallel_chunkwise_recurrent_agree(family, rcfg):
    extra = {"rope_scaling": {"type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(4)],
                              "long_factor": [2.0] * 4}, "original_max_position_embeddings": 16} if family == "phi3" else {}
    model = RetNPhi.from_decoder(_decoder(family, **extra), rcfg)
    toks = _bytes()
    par = _forward(model, toks, "parallel")
    chunk = _forward(model, toks, "chunkwise")
    rec = _recurrent(model, toks)
    scale = float(jnp.abs(par).max())
    assert par.shape == (2, 11, BYTE_VOCAB_SIZE) and scale > 0.1
    np.testing.assert_allclose(chunk, par, atol=1e-5 * scale)
    np.testing.assert_allclose(rec, par, atol=1e-5 * scale)
    # prefill 7 bytes in parallel, continue step by step from the state
    _, state = _prefill(model, toks[:, :7], "parallel")
    tail, _ = _scan_steps(model, toks[:, 7:], state)
    np.testing.assert_allclose(tail, par[:, 7:], atol=1e-5 * scale)


def test_pallas_form_matches_chunkwise_interpret():
    model = RetNPhi.from_decoder(_decoder(hidden=64), RetNPhiConfig(byte_init="random", chunk_size=16))
    toks = _bytes(t=21)
    ref = _forward(model, toks, "chunkwise")
    np.testing.assert_allclose(_forward(model, toks, "pallas"), ref, atol=1e-5 * float(jnp.abs(ref).max()))


def test_weights_are_reused_and_token_tables_dropped():
    dec = _decoder()
    qkv = np.asarray(dec.model.layers[1].self_attn.qkv_proj.weight[...])
    dec_params = count_params(dec, nnx.Param)
    model = RetNPhi.from_decoder(dec, RetNPhiConfig(byte_init="random", gate="swish"))
    np.testing.assert_array_equal(model.layers[1].self_attn.qkv_proj.weight[...], qkv)
    assert model.layers[1].self_attn.qkv_proj is dec.model.layers[1].self_attn.qkv_proj  # moved, not copied
    c = dec.cfg
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert not any("embed_tokens" in n or "lm_head" in n for n in names)
    token_tables = 2 * c.vocab_size * c.hidden_size
    new = 2 * BYTE_VOCAB_SIZE * c.hidden_size + c.num_layers * (c.num_heads * c.head_dim + c.hidden_size * c.hidden_size)
    assert count_params(model, nnx.Param) == dec_params - token_tables + new


def test_gammas_stay_below_one_for_many_heads():
    g = retention_gammas(32, -5.0, -12.0)
    assert g.shape == (32,) and np.all(g < 1.0) and np.all(np.diff(g) > 0)
    assert g[0] == pytest.approx(1 - 2**-5) and g[-1] == pytest.approx(1 - 2**-12)


def test_config_errors_name_the_fix():
    with pytest.raises(RetNPhiConfigError, match="valid"):
        RetNPhiConfig.from_dict({"gate_kind": "swish"})
    with pytest.raises(RetNPhiConfigError, match="one of"):
        RetNPhiConfig(position="alibi")
    with pytest.raises(RetNPhiConfigError, match="tokenizer"):
        RetNPhi.from_decoder(_decoder(), RetNPhiConfig(byte_init="tokens"))


def _byte_bpe_folder(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|bos|>", "<|eos|>"])
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog. héllo wörld"] * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>")
    folder = tmp_path / "tiny_llama"
    config = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=True, bos_token_id=fast.bos_token_id,
                                      eos_token_id=fast.eos_token_id, pad_token_id=None)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return folder


def test_byte_rows_from_tokenizer(tmp_path):
    folder = _byte_bpe_folder(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    from hqf_jax.nn.hf_loading import load_hf_decoder

    emb = np.asarray(load_hf_decoder(str(folder), progress=False).model.embed_tokens.weight[...])
    model = RetNPhi.from_pretrained(str(folder), RetNPhiConfig(byte_init="tokens"), progress=False)
    rows = np.asarray(model.byte_embed.weight[...])
    head = np.asarray(model.byte_head.weight[...])
    # independent check through tokenizer.decode on ASCII first bytes
    decoded = {i: tok.decode([i]).encode("utf-8") for i in range(len(tok)) if i not in tok.all_special_ids}
    multi = 0
    for b in range(128):
        ids = [i for i, s in decoded.items() if s[:1] == bytes([b])]
        if not ids:
            continue
        multi += len(ids) >= 2
        np.testing.assert_allclose(rows[b], emb[ids].mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(head[b], emb[ids].mean(0), rtol=1e-6, atol=1e-7)  # tied: head from embeddings
    assert multi >= 5  # bytes whose vector averages several tokens ("h", "w", " ", ...)
    np.testing.assert_array_equal(rows[BOS_ID], emb[tok.bos_token_id])
    np.testing.assert_array_equal(rows[EOS_ID], emb[tok.eos_token_id])
    # a 2-byte UTF-8 character's lead byte maps too (byte-level BPE has every byte)
    tb = token_bytes(tok)
    assert any(s and s[0] == 0xC3 for s in tb) and tb[tok.bos_token_id] is None
    logits = _forward(model, _bytes(t=5), "chunkwise")
    assert logits.shape == (2, 5, BYTE_VOCAB_SIZE) and bool(jnp.isfinite(logits).all())


@pytest.mark.parametrize("family", ["phi3", "llama", "qwen2"])
def test_default_lora_targets_follow_the_converted_models_family(family):
    """RetNPhi keeps the decoder's projections; the default targets wrap all of them (never a silent subset)."""
    model = RetNPhi.from_decoder(_decoder(family), RetNPhiConfig(byte_init="random", chunk_size=4))
    blocks = {".".join(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, Linear) and "layers" in p}
    wrapped = apply_lora(model, LoRAConfig(rank=2), nnx.Rngs(0))
    assert set(wrapped) == blocks
    assert {w.rsplit(".", 1)[-1] for w in wrapped} == set(FAMILY_TARGETS[family])
    with pytest.raises(LoRAConfigError, match="match no projection"):
        other = "llama" if family == "phi3" else "phi3"
        apply_lora(RetNPhi.from_decoder(_decoder(family), RetNPhiConfig(byte_init="random", chunk_size=4)),
                   LoRAConfig(targets=FAMILY_TARGETS[other]), nnx.Rngs(0))


def test_lora_on_retnphi_trains_only_adapters_norms_and_byte_tables():
    rcfg = RetNPhiConfig(byte_init="random", chunk_size=4)
    model = RetNPhi.from_decoder(_decoder(), rcfg)
    toks = _bytes(t=9)
    before = _forward(model, toks, "chunkwise")
    apply_lora(model, LoRAConfig(rank=4, alpha=8), nnx.Rngs(3))
    np.testing.assert_array_equal(_forward(model, toks, "chunkwise"), before)  # zero-initialised B
    filt = rcfg.trainable_filter()
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, filt))}
    assert {"byte_embed.weight", "byte_head.weight", "norm.weight", "layers.0.self_attn.group_norm.weight",
            "layers.0.self_attn.qkv_proj.lora_B"} <= names
    assert not any(n.endswith("_proj.weight") for n in names)
    frozen = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, frozen_filter(filt)))}
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=filt)

    @nnx.jit
    def step(model, opt, toks):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(toks[:, :-1]), toks[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, filt))(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, toks)) for _ in range(3)]
    assert losses[-1] < losses[0]
    for k, v in nnx.to_flat_state(nnx.state(model, frozen_filter(filt))):
        np.testing.assert_array_equal(np.asarray(v.get_value()), frozen[k], err_msg=str(k))


@pytest.mark.xla_default_emitters
def test_remat_gives_identical_gradients():
    toks = _bytes(t=9)

    def grads(remat):
        model = RetNPhi.from_decoder(_decoder(), RetNPhiConfig(byte_init="random", chunk_size=4, remat=remat))
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(toks), toks).mean()  # noqa: E731
        by_nnx = jax.tree.leaves(nnx.state(nnx.jit(nnx.grad(loss))(model)))
        # the pure style of the shared trainer: jax.grad over the split Params of an nnx.merge'd model
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        by_jax = jax.tree.leaves(jax.jit(jax.grad(lambda p, r: loss(nnx.merge(graphdef, p, r))))(params, rest))
        return by_nnx, by_jax

    (a_nnx, a_jax), (b_nnx, b_jax) = grads(False), grads(True)
    for a, b in zip(a_nnx + a_jax, b_nnx + b_jax):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(a_nnx, a_jax):
        np.testing.assert_array_equal(a, b)
