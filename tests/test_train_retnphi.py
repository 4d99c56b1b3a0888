"""train.retnphi on the shared loop (issue 3, point 4): frozen base stays bit-identical, the run's checkpoint
rebuilds through lm_task.load_run, and eval.bpb / eval.generate work on it."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from hqf_jax import cli
from hqf_jax.data.sources import stdlib_root
from hqf_jax.errors import CheckpointError, ConfigError
from hqf_jax.nn.adapters_io import load_adapter
from hqf_jax.nn.lora import LoRALinear, frozen_filter
from hqf_jax.trainer import lm_task, retnphi_task, token_task
from hqf_jax.trainer.metrics import read_metrics
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Llama token model in HF format (random weights) + a small byte corpus."""
    root = tmp_path_factory.mktemp("retnphi")
    data = root / "data"
    data.mkdir()
    for name in ("textwrap.py", "bisect.py", "heapq.py", "keyword.py"):
        shutil.copy(f"{stdlib_root()}/{name}", data / name)
    texts = [p.read_text() for p in data.iterdir()]
    tok = token_task.train_tokenizer(texts, 300, 2)
    hf_config = token_task.llama_config(dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
                                        tok)
    hf = token_task.save_hf(token_task.build_decoder(hf_config, seed=0), hf_config, tok, root / "hf")
    return root, data, hf


def _args(setup, work, *extra):
    root, data, hf = setup
    return ["--workdir", str(work), "--config", "configs/retnphi_tiny.py", f"model.checkpoint={hf}",
            "data.source=files", f"data.paths={data}", "data.valid_fraction=0.25", "data.seq_len=32",
            "data.batch_size=8", "train.eval_every=6", "train.ckpt_every=6", "train.eval_max_bytes=1024",
            "train.sample_every=1000", "train.sample_len=8", "train.warmup_steps=2", "model.retnphi.chunk_size=16",
            "model.lora.rank=4", *extra]


def _flat(model, filt):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, filt))}


def test_lora_run_freezes_base_and_works_with_eval_bpb_generate_and_adapter(setup, tmp_path, capsysbinary):
    from eval import bpb, generate
    from train import retnphi

    work = tmp_path / "lora"  # with two extra byte heads (self-speculative drafting), trained with the adapters
    retnphi.main(_args(setup, work, "train.steps=12", "model.retnphi.extra_heads=2", "train.extra_heads_weight=1.0"))
    cfg = lm_task.read_run_config(work)
    assert cfg.task == "retnphi" and len(cfg.base_sha256) == 64

    model, cfg, step = lm_task.load_run(work)  # eval's path: builder chosen by the run's config
    assert step == 12 and any(isinstance(m, LoRALinear) for _, m in nnx.iter_modules(model))
    fresh, filt = retnphi_task.build_model(cfg)  # the untrained conversion of the same base
    frozen, trained = _flat(model, frozen_filter(filt)), _flat(model, filt)
    assert frozen and set(frozen) == set(_flat(fresh, frozen_filter(filt)))
    for path, value in _flat(fresh, frozen_filter(filt)).items():
        np.testing.assert_array_equal(frozen[path], value, err_msg=str(path))  # base bit-identical after training
    moved = [p for p, v in _flat(fresh, filt).items() if not np.array_equal(trained[p], v)]
    assert any(p[-1] == "lora_B" for p in moved) and any("byte_embed" in p for p in moved)
    counts = retnphi_task.param_counts(model, filt)
    # rank-4 LoRA on q,k,v,o,gate,up,down of 2 layers (1856 each) + byte embedding and head (2 x 259 x 32)
    # + RMSNorms (2 x 32 per layer + 32) + GroupNorm scales (32 per layer) + 2 extra heads (259 x 32); the rest
    # is frozen
    assert counts["trainable"] == 2 * 1856 + 2 * 259 * 32 + (2 * 64 + 32) + 2 * 32 + 2 * 259 * 32 == 37088
    # each extra head's held-out bits per byte fell (they start as copies of the byte head)
    data = b"".join(p.read_bytes() for p in sorted(setup[1].iterdir()))[-4097:]
    x = jnp.asarray(np.frombuffer(data, np.uint8).astype(np.int32).reshape(1, -1))
    # jitted: one compile for both models (same graph), where eager ran every op of the 4096-byte pass on its own
    metrics = nnx.jit(lambda m, x: lm_task.next_byte_loss(m, {"inputs": x[:, :-1], "targets": x[:, 1:]}, None,
                                                          extra_heads_weight=1.0)[1])
    before, after = metrics(fresh, x), metrics(model, x)
    for j in (1, 2):
        assert float(after[f"extra_head{j}_bpb"]) < float(before[f"extra_head{j}_bpb"]) - 0.05, (j, before, after)
    assert counts["frozen"] == 2 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 32 * 48)  # q,o + GQA k,v + MLP

    final = [m for m in read_metrics(work) if "valid_bpb" in m][-1]
    r = bpb.measure(str(work), max_bytes=1024, batch_size=8)
    assert r["step"] == 12 and abs(r["model_bpb"] - final["valid_bpb"]) < 1e-4, (r, final)

    capsysbinary.readouterr()
    generate.main(["--run", str(work), "--prompt", "def ", "--max-bytes", "12", "--seed", "1"])
    out = capsysbinary.readouterr().out
    assert out.startswith(b"def ") and len(out) > 4

    # the exported adapter on a fresh conversion of the base reproduces the run's model
    manifest = json.loads((work / "adapter" / "adapter.json").read_text())
    assert manifest["base_checkpoint_sha256"] == cfg.base_sha256
    base, _ = retnphi_task.build_model(cfg)
    load_adapter(base, str(work / "adapter"), base_sha256=cfg.base_sha256)
    x = jnp.asarray([list(b"import os\n")], jnp.int32)
    logits = nnx.jit(lambda m, x: m(x))  # the same compiled program runs both models
    np.testing.assert_array_equal(np.asarray(logits(base, x)), np.asarray(logits(model, x)))

    # a changed base is refused on rebuild and on resume, in one line naming the fix
    _, _, hf = setup
    saved = hf.parent / "saved.safetensors"
    shutil.copy(hf / "model.safetensors", saved)
    try:
        tensors = load_file(str(hf / "model.safetensors"))
        tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
        save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(CheckpointError, match="changed since this run trained"):
            lm_task.load_run(work)
        with pytest.raises(CheckpointError, match="trained on another base"):
            retnphi.main(_args(setup, work, "train.steps=14"))
    finally:
        shutil.copy(saved, hf / "model.safetensors")


@pytest.mark.slow
def test_full_mode_trains_every_parameter_and_reloads(setup, tmp_path):
    from train import retnphi

    work = tmp_path / "full"
    retnphi.main(_args(setup, work, "train.steps=3", "model.train_mode=full", "train.eval_every=3",
                       "train.ckpt_every=3"))
    model, cfg, step = lm_task.load_run(work)
    fresh, filt = retnphi_task.build_model(cfg)
    assert filt is nnx.Param and step == 3
    before, after = _flat(fresh, nnx.Param), _flat(model, nnx.Param)
    assert set(before) == set(after)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert ("layers", 0, "mlp", "down_proj", "weight") in changed  # the base trains too
    assert len(changed) == len(before)
    assert not (work / "adapter").exists()


def test_run_kinds_and_config_errors(setup, tmp_path):
    from hqf_jax.nn.lora import LoRAConfig
    from hqf_jax.nn.retnphi import RetNPhiConfig

    for name in ("retnphi_tiny", "retnphi", "retnphi_phi35"):  # every shipped config is a valid RetNPhi run
        c = cli.load_config_file(str(ROOT / f"configs/{name}.py"))
        assert c.task == "retnphi" and lm_task.builder_for(c) is retnphi_task.build_model
        RetNPhiConfig.from_dict(c.model.retnphi.to_dict())
        LoRAConfig.from_dict(c.model.lora.to_dict())
    lm_cfg = cli.load_config_file(str(ROOT / "configs/lm_tiny.py"))
    assert lm_task.builder_for(lm_cfg) is lm_task.build_model
    token_cfg = cli.load_config_file(str(ROOT / "configs/token_lm_tiny.py"))
    with pytest.raises(CheckpointError, match="not a byte LM"):
        lm_task.builder_for(token_cfg)
    cfg = cli.apply_overrides(cli.load_config_file(str(ROOT / "configs/retnphi_tiny.py")),
                              [f"model.checkpoint={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="does not exist"):
        retnphi_task.base_sha256(cfg)
    cfg = cli.apply_overrides(cli.load_config_file(str(ROOT / "configs/retnphi_tiny.py")),
                              [f"model.checkpoint={setup[2]}", "model.train_mode=half"])
    with pytest.raises(ConfigError, match="train_mode"):
        retnphi_task.build_model(cfg)


def test_flops_per_byte_counts_weight_gradients_of_trainable_matmuls_only(setup):
    cfg = cli.apply_overrides(cli.load_config_file(str(ROOT / "configs/retnphi_tiny.py")),
                              [f"model.checkpoint={setup[2]}", "model.retnphi.chunk_size=16", "model.lora.rank=4"])
    lora_model, lora_filt = retnphi_task.build_model(cfg)
    full_model, full_filt = retnphi_task.build_model(cli.apply_overrides(cfg, ["model.train_mode=full"]))
    # hand count (D=32, 2 layers, 4 heads of 8, 2 kv heads, MLP 48, byte head 259 x 32)
    dense = 2 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 32 * 48) + 259 * 32
    adapters = 2 * 1856
    retention = 2 * 4 * (16 * 2 * 8 + 3 * 8 * 8)  # per position: chunk (16) x (dk + dv) + 3 dk dv, per layer and head
    assert retnphi_task.flops_per_byte(full_model, full_filt, 32) == 6 * dense + 6 * retention
    assert retnphi_task.flops_per_byte(lora_model, lora_filt, 32) == (
        4 * (dense + adapters) + 2 * (adapters + 259 * 32) + 6 * retention)  # weight grads: adapters + byte head
