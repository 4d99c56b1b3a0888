"""The framework's own token model (issue 3, point 5): tokenizer, HF-format export and its round trips."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax import cli
from hqf_jax.data.sources import stdlib_root
from hqf_jax.errors import ConfigError
from hqf_jax.nn.hf_loading import load_hf_decoder
from hqf_jax.nn.retnphi import RetNPhi, RetNPhiConfig
from hqf_jax.trainer import token_task
from hqf_jax.trainer.metrics import read_metrics
from tests.helpers import ROOT

TEXTS = ["def add(x, y):\n    return x + y\n", "class Foo:\n    \"\"\"héllo wörld — ünïcode ✓\"\"\"\n    pass\n",
         "for i in range(10):\n\tprint(i, end='')\r\n"] * 30


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    token_task.save_tokenizer(token_task.train_tokenizer(TEXTS, 320, 2), folder)
    return token_task.load_tokenizer(folder)


def test_tokenizer_is_lossless_byte_level_bpe_loadable_by_autotokenizer(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert 256 + 3 < len(tokenizer) <= 320  # merges were learnt
    lengths = token_task.token_byte_lengths(tokenizer)
    for text in [*TEXTS[:3], "unseen ∑ text \x00\x7f with 🙂 emoji"]:
        ids = tokenizer(text).input_ids
        assert ids == tokenizer.backend_tokenizer.encode(text).ids  # no BOS/EOS added behind our back
        assert tokenizer.decode(ids) == text
        assert lengths[ids].sum() == len(text.encode("utf-8"))  # bytes per token add up exactly
    assert len(tokenizer("def add(x, y):").input_ids) < len("def add(x, y):")  # merges compress
    stream = token_task.encode_docs(tokenizer, [("a", TEXTS[0].encode()), ("b", TEXTS[1].encode())])
    assert list(stream).count(tokenizer.eos_token_id) == 2 and stream[-1] == tokenizer.eos_token_id


def test_token_sampler_is_pure_in_step_and_bos_shifted():
    stream = np.arange(100, 400, dtype=np.int32)
    s = token_task.TokenWindowSampler(stream, 16, 4, seed=3, bos_id=0)
    a, b = s(7), s(7)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(s(8)["targets"], a["targets"])
    np.testing.assert_array_equal(a["inputs"][:, 0], 0)
    np.testing.assert_array_equal(a["inputs"][:, 1:], a["targets"][:, :-1])
    np.testing.assert_array_equal(np.diff(a["targets"], axis=1), 1)  # contiguous windows of the stream


def _randomize(model, seed):
    """Every Param (norms included) random, so a dropped or misnamed tensor shows up."""
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]))


@pytest.mark.parametrize("tied", [False, True])
def test_hf_export_round_trip_bit_exact_and_transformers_parity(tokenizer, tmp_path, tied):
    import torch
    import transformers

    model_cfg = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=0, max_position_embeddings=64, rope_theta=500.0,
                     rms_norm_eps=1e-5, tie_word_embeddings=tied, hidden_act="silu", initializer_range=0.02,
                     attention_bias=False, mlp_bias=False)
    hf_config = token_task.llama_config(model_cfg, tokenizer)
    model = token_task.build_decoder(hf_config, seed=0)
    _randomize(model, 1)
    folder = token_task.save_hf(model, hf_config, tokenizer, tmp_path / "hf", {"steps": 0})
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}

    loaded = load_hf_decoder(str(folder), progress=False)
    assert (loaded.lm_head is None) == tied
    want, got = nnx.to_flat_state(nnx.state(model, nnx.Param)), nnx.to_flat_state(nnx.state(loaded, nnx.Param))
    assert [p for p, _ in want] == [p for p, _ in got]
    for (path, a), (_, b) in zip(want, got):
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path))
    ids = np.asarray([tokenizer(TEXTS[1]).input_ids[:20], tokenizer(TEXTS[2]).input_ids[:20]], np.int32)
    ours = np.asarray(model(jnp.asarray(ids)))
    np.testing.assert_array_equal(np.asarray(loaded(jnp.asarray(ids))), ours)

    torch_model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = torch_model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.abs(theirs - ours).max() < 1e-4, np.abs(theirs - ours).max()
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert auto(TEXTS[1]).input_ids == tokenizer(TEXTS[1]).input_ids


def test_unknown_model_key_names_the_valid_ones(tokenizer):
    with pytest.raises(ConfigError, match="valid .LlamaConfig fields"):
        token_task.llama_config({"hidden": 8}, tokenizer)


TINY = ["--config", "configs/token_lm_tiny.py", "tokenizer.vocab_size=384", "model.hidden_size=32",
        "model.intermediate_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.num_key_value_heads=1", "data.seq_len=32", "data.batch_size=8", "train.lr=1e-2", "train.warmup_steps=5",
        "train.eval_every=20", "train.ckpt_every=20", "train.sample_every=1000", "train.sample_len=8",
        "train.eval_max_tokens=2048", "data.source=files", "data.valid_fraction=0.2"]


def test_train_token_lm_learns_exports_and_converts(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    from train import token_lm

    data = tmp_path / "data"
    data.mkdir()
    for name in ("textwrap.py", "string.py", "heapq.py", "shlex.py", "sched.py", "calendar.py"):  # 2 land in valid
        shutil.copy(f"{stdlib_root()}/{name}", data / name)
    work = tmp_path / "run"
    args = ["--workdir", str(work), *TINY, f"data.paths={data}"]
    token_lm.main([*args, "train.steps=200", "train.eval_every=100", "train.ckpt_every=100"])
    evals = [m for m in read_metrics(work) if "valid_bpb" in m]
    assert [m["step"] for m in evals] == [100, 200]
    # it learns: validation loss falls and ends > 1 nat below the uniform distribution over the vocabulary
    assert evals[-1]["valid_loss"] < evals[0]["valid_loss"] < np.log(384), evals
    assert evals[-1]["valid_loss"] < np.log(384) - 1.0, evals
    info = json.loads((work / "hf" / "training.json").read_text())
    assert info["steps"] == 200 and info["tokens"] == 200 * 32 * 8 and abs(info["valid_bpb"] - evals[-1]["valid_bpb"]) < 1e-9

    # a re-run (resume) reuses the tokenizer and the token ids instead of retraining them
    stamp = (work / "tokenizer" / "tokenizer.json").stat().st_mtime_ns
    cfg = cli.apply_overrides(cli.load_config_file("configs/token_lm_tiny.py"), [*TINY[2:], f"data.paths={data}"])
    tok2, train_ids, _ = token_task.prepare_data(cfg, work)
    np.testing.assert_array_equal(train_ids, np.load(work / "tokens_train.npy"))
    assert (work / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == stamp and len(tok2) == info["vocab"]
    assert (work / "checkpoints" / "200").exists()

    # the export is what the trainer ended with, and RetNPhi converts it through the HF import path
    hf = str(work / "hf")
    decoder = load_hf_decoder(hf, progress=False)
    tok = token_task.load_tokenizer(hf)
    ev = token_task.make_eval_fn(np.load(work / "tokens_valid.npy"), token_task.token_byte_lengths(tok), 32, 8, 2048,
                                 tok.bos_token_id)(decoder)
    assert abs(ev["valid_bpb"] - json.loads((work / "hf" / "training.json").read_text())["valid_bpb"]) < 1e-5
    byte_model = RetNPhi.from_pretrained(hf, RetNPhiConfig(byte_init="tokens", chunk_size=16), progress=False)
    logits = byte_model(jnp.asarray([list(b"def f(x):")], jnp.int32))
    assert logits.shape == (1, 9, 259) and bool(jnp.isfinite(logits).all())
    assert "def " in token_task.sample_text(decoder, tok, "def ", 6, seed=0)


def test_bytes_per_token_counts_utf8_bytes_over_tokens(tokenizer):
    from studies.bytes_per_token import bytes_per_token

    docs = [("a.py", TEXTS[0].encode()), ("b.py", TEXTS[1].encode())]
    n_tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in TEXTS[:2])
    n_bytes = len(TEXTS[0].encode()) + len(TEXTS[1].encode())  # the non-ASCII text counts its UTF-8 bytes
    assert bytes_per_token(tokenizer, docs) == pytest.approx(n_bytes / n_tokens)
    assert bytes_per_token(tokenizer, docs) > 1.0  # the BPE merged something on text it was trained on
