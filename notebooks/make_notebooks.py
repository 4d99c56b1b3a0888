"""Write the tour notebooks (notebooks/0*.ipynb) from the cell sources below, without outputs.

    python notebooks/make_notebooks.py        # rewrites every notebook; commit the .ipynb files

Edit the cells here, not in the .ipynb files, so the six notebooks keep the same install and
set-up cells. tests/test_notebooks.py executes every notebook in small mode and checks that the
committed files equal what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

COLAB = ("**Open in Colab:** File > Open notebook > GitHub, paste the repository URL and pick "
         "`notebooks/{name}.ipynb` (or open `https://colab.research.google.com/github/<org>/hqf-jax/blob/main/notebooks/{name}.ipynb`). "
         "Runtime > Change runtime type > GPU for the full-size run; on a CPU the notebook runs in small mode.")

INSTALL = '''\
# Install hqf-jax when it is not importable (Colab). Set REPO_URL to the hqf-jax git URL, or a local clone's path.
import importlib, importlib.util, os, subprocess, sys

REPO_URL = os.environ.get("HQF_REPO_URL", "")  # e.g. "https://github.com/<org>/hqf-jax"
if importlib.util.find_spec("hqf_jax") is None:
    if not REPO_URL:
        raise RuntimeError("hqf_jax is not installed: set REPO_URL in this cell to the hqf-jax git URL and run it again")
    target = REPO_URL if os.path.isdir(REPO_URL) else f"git+{REPO_URL}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)
    importlib.invalidate_caches()
print("hqf_jax:", os.path.dirname(importlib.util.find_spec("hqf_jax").origin))'''

SETUP = '''\
{pre}import jax

ACCEL = jax.default_backend() != "cpu"  # "gpu" on a Colab GPU runtime
# SMALL: tiny sizes that finish in well under a minute on a CPU; the default is SMALL exactly when there is no GPU.
SMALL = os.environ.get("HQF_NB_SMALL", "0" if ACCEL else "1") == "1"
# TINY (HQF_NB_TINY=1, the test suite's run): SMALL with fewer layers, steps and bytes; the same cells print the same checks
TINY = SMALL and os.environ.get("HQF_NB_TINY", "0") == "1"
RUNS = os.environ.get("HQF_NB_RUNS", "runs/notebooks")  # run folders of this notebook go here
CONFIGS = os.path.dirname(importlib.import_module("configs").__file__)  # the repository's configs/*.py
# compiled programs are cached on disk: re-running a cell (or the next notebook) skips the XLA compile
jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(RUNS, "jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
print(f"backend {{jax.default_backend()}}, {{jax.device_count()}} device(s): {{jax.devices()[0].device_kind}}; SMALL={{SMALL}}" + (" (TINY)" if TINY else ""))'''


def setup(pre: str = "") -> str:
    return SETUP.format(pre=pre)


def header(name: str, title: str, body: str) -> list:
    return [new_markdown_cell(f"# {title}\n\n{body}\n\n{COLAB.format(name=name)}"), new_code_cell(INSTALL)]


# ------------------------------------------------------------------------------------------ 01 quickstart
NB01 = header("01_quickstart", "01 · Quickstart: train the byte LM, score it beside gzip/xz, generate", """\
A RetNet byte-level language model (retention in parallel/chunkwise form for training, recurrent form
with O(1) state per byte for generation) trained on the `.py` files of the Python standard library by
the shared trainer (`hqf_jax.trainer.loop.train`: orbax checkpoints, metrics.jsonl, tensorboard). Then
bits per byte on held-out files next to `gzip -9` and `xz -9e` of the same bytes (`eval.bpb.measure`),
and generation (`hqf_jax.nn.generate`).

The same run from a shell: `python -m train.lm --config configs/lm_tiny.py` then
`python -m eval.bpb --run runs/lm_tiny` and `python -m eval.generate --run runs/lm_tiny --prompt "def "`.""") + [
    new_code_cell(setup()),
    new_markdown_cell("## Config\n\nA config is a python file whose `get_config()` returns an `ml_collections.ConfigDict`; "
                      "overrides are `key=value` words, as on the command line (an unknown key fails naming the valid ones)."),
    new_code_cell('''\
import shutil

from hqf_jax import cli
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import train

WORKDIR = os.path.join(RUNS, "01_quickstart")
shutil.rmtree(WORKDIR, ignore_errors=True)  # this notebook starts a fresh run each time
if SMALL:  # 173k parameters, 40 steps of 8 x 128 bytes: a CPU smoke run (it will not beat gzip)
    cfg = cli.load_config_file(os.path.join(CONFIGS, "lm_tiny.py"))
    cfg = cli.apply_overrides(cfg, ["train.steps=40", "train.warmup_steps=10", "data.batch_size=8", "train.log_every=5",
                                    "train.eval_every=40", "train.ckpt_every=20", "train.sample_every=40",
                                    "train.eval_max_bytes=8192"])
    if TINY:
        cfg = cli.apply_overrides(cfg, ["model.num_layers=1", "train.steps=20", "train.ckpt_every=10", "train.eval_every=20"])
else:  # the README's default job: ~1.4M parameters, 800 steps of 32 x 256 bytes (a few minutes on a GPU)
    cfg = cli.load_config_file(os.path.join(CONFIGS, "lm.py"))
print("model:", dict(cfg.model))
print("train:", {k: cfg.train[k] for k in ("steps", "lr", "warmup_steps", "eval_every", "ckpt_every")},
      "batch", cfg.data.batch_size, "x", cfg.data.seq_len, "bytes")'''),
    new_markdown_cell("## Train\n\nRe-running `train` on the same folder resumes from its newest checkpoint "
                      "(batches are a pure function of the step, so the resumed run is the same run)."),
    new_code_cell('''\
task, corpus = lm_task.build_task(cfg)
if SMALL:
    task.sample_fn = None  # no sample in the log at the end: we generate below
final = train(task, cfg.train, cfg.mesh, WORKDIR, cli.config_to_json(cfg))
print({k: round(v, 4) for k, v in final.items() if k in ("step", "loss", "bpb", "valid_bpb", "bytes_per_s")})
print(sorted(s for s in os.listdir(os.path.join(WORKDIR, "checkpoints")) if s.isdigit()), "<- orbax checkpoint steps")'''),
    new_code_cell('''\
import matplotlib.pyplot as plt

from hqf_jax.trainer.metrics import read_metrics

logged = [r for r in read_metrics(WORKDIR) if "bpb" in r]
evals = [r for r in read_metrics(WORKDIR) if "valid_bpb" in r]
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot([r["step"] for r in logged], [r["bpb"] for r in logged], label="train batch")
ax.plot([r["step"] for r in evals], [r["valid_bpb"] for r in evals], "o", label="held-out files")
ax.axhline(8.0, color="gray", lw=0.8, ls=":", label="8 bits (raw bytes)")
ax.set(xlabel="step", ylabel="bits per byte", title="byte LM training")
ax.legend()
plt.show()'''),
    new_markdown_cell("## Bits per byte beside gzip and xz\n\n`eval.bpb.measure` rebuilds the model from the run "
                      "folder's `config.json`, restores the newest checkpoint and scores held-out bytes as "
                      "non-overlapping windows (each starts from BOS, no carried context); the compressors see "
                      "the same bytes as one stream, which favours them."),
    new_code_cell('''\
from eval.bpb import measure

result = measure(WORKDIR, max_bytes=(8192 if TINY else 16384) if SMALL else 1 << 18, batch_size=cfg.data.batch_size)
print(f"held-out bytes: {result['bytes']:,} (step {result['step']})")
for name in ("model_bpb", "gzip -9", "xz -9e"):
    print(f"  {name.replace('model_bpb', 'byte LM'):<10} {result[name]:6.3f} bits/byte")'''),
    new_markdown_cell("## Generate\n\n`generate.stream` yields one byte at a time (the prompt is prefilled in the "
                      "training form, then every byte is one recurrent step); `generate.sample` draws a batch in "
                      "one jitted scan."),
    new_code_cell('''\
import jax.numpy as jnp

from hqf_jax.nn import generate

model = task.model  # the trained model the loop hands back (lm_task.load_run(WORKDIR) restores it from disk)
print("def ", end="")
for byte in generate.stream(model, b"def ", (64 if TINY else 200) if SMALL else 400, seed=0, temperature=0.8, top_p=0.95):
    print(chr(byte) if byte < 128 else "\ufffd", end="", flush=True)  # one recurrent step per byte
print()
if not SMALL:  # a batch of prompts (equal lengths) in one jitted scan
    prompts = [b"import ", b"class X", b"return ", b"    if "]
    ids = jnp.stack([jnp.asarray(generate.encode_prompt(p)) for p in prompts])
    for p, row in zip(prompts, generate.sample(model, ids, 120, jax.random.PRNGKey(1), temperature=0.8, top_p=0.95)):
        print(repr(p + generate.decode(row)))'''),
]

# ------------------------------------------------------------------------------------------ 02 retnphi
NB02 = header("02_retnphi_bootstrap", "02 · RetNPhi bootstrap: convert a token model, train adapters, export the delta", """\
RetNPhi turns a pretrained Hugging Face decoder (Phi-3, Llama, Qwen2, Mistral families; safetensors only)
into a byte-level retention LM: every softmax attention becomes multi-scale retention that reuses the
decoder's own q/k/v/o projections, the token embedding and head become byte tables (initialised from the
tokens that start with each byte), and LoRA/DoRA adapters plus norms and byte tables are trained on bytes.
The trained delta is exported as one small safetensors file.

The base here is the framework's own token model (`train.token_lm`: a byte-level BPE and a Llama-style
decoder trained on the standard library, exported as a Hugging Face folder). For a real checkpoint, point
`model.checkpoint` at its folder. The cells below do, step by step, what the two entry points do:

    python -m train.token_lm --config configs/token_lm_tiny.py
    python -m train.retnphi --config configs/retnphi_tiny.py

See docs/retnphi.md.""") + [
    new_code_cell(setup()),
    new_markdown_cell("## 1. The token model, in Hugging Face format\n\n"
                      "What `python -m train.token_lm` does, step by step: train the tokenizer and the decoder on the "
                      "shared loop, then write the Hugging Face folder."),
    new_code_cell('''
import shutil

from hqf_jax import cli
from hqf_jax.trainer import token_task
from hqf_jax.trainer.loop import train

WORKDIR = os.path.join(RUNS, "02_retnphi")
TOKEN_RUN, RUN = os.path.join(WORKDIR, "token_lm"), os.path.join(WORKDIR, "retnphi")
HF_DIR = os.path.join(TOKEN_RUN, "hf")
shutil.rmtree(WORKDIR, ignore_errors=True)
tcfg = cli.load_config_file(os.path.join(CONFIGS, "token_lm_tiny.py"))
if SMALL:
    tcfg = cli.apply_overrides(tcfg, ["tokenizer.vocab_size=512", "model.hidden_size=64", "model.intermediate_size=128",
                                      "model.num_hidden_layers=2", "data.seq_len=64", "train.steps=30", "train.warmup_steps=5",
                                      "train.eval_every=30", "train.ckpt_every=30", "train.eval_max_tokens=2048"])
if TINY:
    tcfg = cli.apply_overrides(tcfg, ["model.num_hidden_layers=1", "train.steps=15", "train.eval_every=15", "train.ckpt_every=15"])
task, hf_config, tokenizer = token_task.build_task(tcfg, TOKEN_RUN)
task.sample_fn = None  # no text sample at the end of this short run
final = train(task, tcfg.train, tcfg.mesh, TOKEN_RUN, cli.config_to_json(tcfg))
token_task.save_hf(task.model, hf_config, tokenizer, HF_DIR, {"steps": int(final["step"]), "valid_bpb": final["valid_bpb"]})
token_bpb = final["valid_bpb"]
print(sorted(os.listdir(HF_DIR)), f"token model: {token_bpb:.3f} bits/byte on held-out files")'''),
    new_markdown_cell("## 2. Convert to a byte-level retention LM\n\n`configs/retnphi_tiny.py`'s model part names the "
                      "checkpoint folder, the retention settings (decays, GroupNorm, position, byte-table init) and the "
                      "LoRA config; `retnphi_task.build_task` converts the checkpoint with `build_retnphi` and gives the "
                      "loop the filter of what trains (adapters, norms, byte tables). The base stays frozen."),
    new_code_cell('''
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from hqf_jax.trainer import lm_task, retnphi_task

overrides = [f"model.checkpoint={HF_DIR}"] + (["data.batch_size=8", "train.steps=40", "train.warmup_steps=5",
                                                "train.ckpt_every=40", "train.eval_max_bytes=8192"] if SMALL else [])
overrides += ["train.steps=20", "train.ckpt_every=20", "train.eval_max_bytes=4096"] if TINY else []
cfg = cli.apply_overrides(cli.load_config_file(os.path.join(CONFIGS, "retnphi_tiny.py")), overrides)
with cfg.unlocked():
    cfg.base_sha256 = retnphi_task.base_sha256(cfg)  # recorded in config.json: reloading refuses a changed base
task, corpus = retnphi_task.build_task(cfg)
task.eval_fn = task.sample_fn = None  # scored below
model = task.model
print("retention:", dict(cfg.model.retnphi))
print("LoRA on", list(cfg.model.lora.targets), "rank", cfg.model.lora.rank, "(at this toy size the byte tables dominate the trainable count)")
base = load_file(os.path.join(HF_DIR, "model.safetensors"))
q = np.asarray(model.layers[0].self_attn.q_proj.weight.get_value())
print("layer 0 q_proj reused:", bool(np.array_equal(q, base["model.layers.0.self_attn.q_proj.weight"])))
evaluate = lm_task.make_eval_fn(corpus.stream("valid"), cfg.data.seq_len, cfg.data.batch_size, cfg.train.eval_max_bytes)
untrained_bpb = evaluate(model)["valid_bpb"]
print(f"converted, before any byte training: {untrained_bpb:.3f} bits/byte on held-out files")'''),
    new_markdown_cell("## 3. Train the adapters on bytes, export the delta\n\nThe shared loop with the byte-LM task "
                      "pieces (RetNPhi has the byte-LM interface); only the trainable filter is in the optimizer state "
                      "and the checkpoints. `export_adapter` writes the delta (`python -m train.retnphi` does both)."),
    new_code_cell('''
from hqf_jax.scoring.compressors import BASELINES
from hqf_jax.nn.adapters_io import export_adapter
from hqf_jax.nn.lora import LoRAConfig

final = train(task, cfg.train, cfg.mesh, RUN, cli.config_to_json(cfg))
ADAPTER = os.path.join(RUN, "adapter")
manifest = export_adapter(task.model, ADAPTER, LoRAConfig.from_dict(cfg.model.lora.to_dict()), trainable=task.trainable,
                          base_sha256=cfg.base_sha256, config=cfg.model.to_dict())
print(f"delta {manifest['bytes'] / 1024:.0f} KiB vs base checkpoint {os.path.getsize(os.path.join(HF_DIR, 'model.safetensors')) / 1024:.0f} KiB")

trained, _, step = lm_task.load_run(RUN)  # rebuilt from config.json (task=retnphi) + the newest checkpoint
scored = lm_task.eval_windows(corpus.stream("valid"), cfg.data.seq_len, cfg.train.eval_max_bytes).tobytes()
print(f"held-out bits/byte ({len(scored):,} bytes): RetNPhi {evaluate(trained)['valid_bpb']:.3f} after {step} adapter steps "
      f"(converted, untrained {untrained_bpb:.3f}); token model {token_bpb:.3f}; "
      + "; ".join(f"{k} {f(scored):.3f}" for k, f in BASELINES.items()))'''),
    new_markdown_cell("## 4. The exported delta: load it onto a fresh base, merge\n\n"
                      "`adapter.safetensors` holds every trainable tensor; `adapter.json` the LoRA config, the "
                      "wrapped targets and the sha256 of the base checkpoint (a mismatched base is refused)."),
    new_code_cell('''\
import json

import jax.numpy as jnp

from hqf_jax.nn.adapters_io import load_adapter
from hqf_jax.nn.hf_loading import checkpoint_sha256
from hqf_jax.nn.lora import merge
from hqf_jax.nn.retnphi import RetNPhi, RetNPhiConfig

print(json.dumps({k: manifest[k] for k in ("format", "targets", "lora", "num_params", "bytes")})[:400], "...")
fresh = RetNPhi.from_pretrained(HF_DIR, RetNPhiConfig.from_dict(dict(cfg.model.retnphi)), progress=False)
load_adapter(fresh, ADAPTER, base_sha256=checkpoint_sha256(HF_DIR))
logits = nnx.jit(lambda m, x: m(x))
probe = jnp.asarray(corpus.stream("valid")[:64][None].astype(np.int32))
want = np.asarray(logits(trained, probe))
print("fresh base + adapter file == trained checkpoint:", bool(np.array_equal(np.asarray(logits(fresh, probe)), want)))
print("merged", merge(fresh), "adapters into the base; max |logit change|:", float(np.abs(np.asarray(logits(fresh, probe)) - want).max()))'''),
    new_code_cell('''\
from hqf_jax.nn import generate

print("def " + bytes(generate.stream(fresh, b"def ", 64 if TINY else 160, seed=0, temperature=0.8, top_p=0.95)).decode("utf-8", "replace"))'''),
]

# ------------------------------------------------------------------------------------------ 03 quantize
NB03 = header("03_quantize", "03 · Quantize: the φ-grid beside NF4 and int4", """\
The φ-grid codec stores each weight as a sign and an index k of the level s·φ^-k (optionally plus uniform
deviation stages); the baselines are round-to-nearest int-b and NF4 (QLoRA's table, optional double
quantization). Every stored bit is counted: codes, scales, zero points, permutations. Here: one matrix
in detail, then a trained byte LM under each method (bits, held-out bits/byte, weight SQNR, greedy agreement),
a plot, the quantized model generating, and packed storage whose size equals the accounting.
See docs/quant.md for the measured verdict.""") + [
    new_code_cell(setup()),
    new_markdown_cell("## A small trained byte LM\n\nThe quickstart's tiny config (train longer with SMALL=False)."),
    new_code_cell('''\
import shutil

import jax.numpy as jnp
import numpy as np

from hqf_jax import cli
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import train

WORKDIR = os.path.join(RUNS, "03_quantize")
shutil.rmtree(WORKDIR, ignore_errors=True)
cfg = cli.load_config_file(os.path.join(CONFIGS, "lm_tiny.py"))
cfg = cli.apply_overrides(cfg, ["train.steps=40", "train.warmup_steps=10", "data.batch_size=8", "train.eval_every=40",
                                "train.ckpt_every=40", "train.sample_every=40", "train.eval_max_bytes=8192"]
                          if SMALL else ["train.steps=600"])
if TINY:
    cfg = cli.apply_overrides(cfg, ["model.num_layers=1", "train.steps=20", "train.ckpt_every=20"])
task, corpus = lm_task.build_task(cfg)
task.eval_fn = task.sample_fn = None  # every method is scored below, the unquantized model first
final = train(task, cfg.train, cfg.mesh, WORKDIR, cli.config_to_json(cfg))
model = task.model'''),
    new_markdown_cell("## One matrix\n\n`Q.quantize(w, spec)` returns a `QTensor`; `Q.accounting` counts its packed "
                      "fields. Presets: " + "`fp32 bf16 int8 int4 int4z nf4 nf4dq phi5 phi5u8 phi6u8 phi5u4 e5u8`, or "
                      "`phi:index_bits=6:dev_bits=4:...`."),
    new_code_cell('''\
from hqf_jax import quant as Q
from hqf_jax.quant import lm_adapter

params = lm_adapter.params_of(model)
from hqf_jax.ops.quant_codecs import to_matrix

params = lm_adapter.params_of(model)
name, w = max(((jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
               if "blocks" in jax.tree_util.keystr(p) and x.ndim == 2), key=lambda item: item[1].size)  # a block's largest matrix
print("matrix", name, w.shape)
SPECS = ["bf16", "int8", "phi5u8", "phi5", "int4", "nf4"] + ([] if SMALL else ["e5u8", "phi5u4", "int4z", "nf4dq"])
for spec in SPECS:
    q = Q.quantize(w, spec)
    acc = Q.accounting(q)
    err = np.asarray(Q.dequantize(q), np.float64) - np.asarray(w, np.float64)
    sqnr = 10 * np.log10(np.sum(np.asarray(w, np.float64) ** 2) / max(np.sum(err**2), 1e-30))
    inside = np.all(np.abs(np.asarray(to_matrix(jnp.asarray(err)))) <= np.asarray(Q.error_bound(q, w)) + 1e-6)
    fields = ", ".join(f"{k} {v:.2f}" for k, v in acc["per_field_bpw"].items())
    print(f"{spec:>7}: {acc['bits_per_weight']:5.2f} bits/w (x{acc['ratio_vs_bf16']:.2f} vs bf16) SQNR {sqnr:5.1f} dB"
          f"  |error| within the codec's bound: {bool(inside)}  [{fields}]")'''),
    new_markdown_cell("## The whole model under each method\n\n`eval.quant_eval.evaluate_methods` quantizes the "
                      "same leaves for every method (matrices whose columns the group size divides; the 259-row "
                      "embedding and the norms stay fp32), then scores held-out bits per byte and greedy "
                      "continuations against the unquantized model."),
    new_code_cell('''\
from eval.quant_eval import evaluate_methods, print_table

stream = corpus.stream("valid")
loss_fn = lm_adapter.make_bpb_fn(model, stream, cfg.data.seq_len, 16, 4096 if SMALL else 1 << 15)
prompts = lm_adapter.prompts_from(stream, 4 if SMALL else 16, 32)
gen_fn = lm_adapter.make_greedy_fn(model, prompts, 16 if SMALL else 48)
methods = SPECS + ([] if SMALL else ["int:bits=5", "int:bits=3"])
rows = evaluate_methods(params, methods, loss_fn, gen_fn)
print_table(rows)'''),
    new_code_cell('''\
import matplotlib.pyplot as plt

fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
for r in rows[1:]:
    phi = r["method"].startswith(("phi", "e5"))
    x = r["quantized_bits_per_weight"]
    for a, y in ((ax[0], max(r["delta_loss"], 1e-5)), (ax[1], r["sqnr_db"])):
        a.scatter(x, y, c="C1" if phi else "C0", marker="o" if phi else "^")
        a.annotate(r["method"].split("/")[0], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
ax[0].set(xlabel="honest bits per weight", ylabel="Δ held-out bits/byte (floor 1e-5)", yscale="log", title="quality vs bits")
ax[1].set(xlabel="honest bits per weight", ylabel="weight SQNR (dB)", title="reconstruction vs bits (orange: φ-grid)")
plt.tight_layout()
plt.show()'''),
    new_markdown_cell("## The quantized model in use, and on disk\n\n`quantize_model` swaps the dense layers for "
                      "`QuantLinear` (packed weights; `impl=\\\"pallas\\\"` selects the fused dequantize-matmul "
                      "kernel on a GPU). `save_quantized` writes a safetensors file whose data section is exactly "
                      "the accounted bytes."),
    new_code_cell('''\
from flax import nnx

from hqf_jax.nn import generate
from hqf_jax.quant.model import quantize_model
from hqf_jax.quant.storage import data_bytes

qmodel, report = quantize_model(nnx.clone(model), "phi5u8", impl="pallas" if ACCEL else "reference")
print(f"{len(report)} dense layers in phi5u8")
print("def " + bytes(generate.stream(qmodel, b"def ", 32 if TINY else 100, seed=0, temperature=0.8)).decode("utf-8", "replace"))

qtree = Q.quantize_tree(params, None, "nf4")
info = Q.save_quantized(os.path.join(WORKDIR, "nf4"), qtree)
acc = Q.tree_accounting(qtree)
path = os.path.join(WORKDIR, "nf4", "weights.safetensors")
print(f"nf4 file data section {data_bytes(path):,} bytes = accounted {acc['total_bytes']:,} bytes; "
      f"whole model x{acc['ratio_vs_fp32']:.2f} smaller than fp32")'''),
]

# ------------------------------------------------------------------------------------------ 04 holographic
NB04 = header("04_holographic_memory", "04 · Holographic memory: Cl(3,1) algebra, capacity, generation", """\
The memory binds a context (the ordered product of its tokens' SO(4) rotations) to a target by adding
`φ⁻¹ C T` into a 4×4 bucket chosen by the context's quantised Clifford coefficients (a tower of 16^L
leaves), keeps an exact episodic cache beside it, and consolidates per-bucket prototypes by "dreaming".
Here: the algebra checked numerically, where one superposition breaks (capacity beside HRR/FHRR at equal
floats), and a memory learned from bytes that generates text, scored beside a Kneser-Ney n-gram.
See docs/holo.md for the full measurements and the claims it checks.""") + [
    new_code_cell(setup()),
    new_markdown_cell("## Cl(3,1): the Cayley table comes from the metric (+,+,+,−)"),
    new_code_cell('''\
import numpy as np
import jax.numpy as jnp
import matplotlib.pyplot as plt

from hqf_jax.ops import clifford as cl, grace, so4

key = jax.random.PRNGKey(0)
a, b, c = jax.random.normal(key, (3, 1000, 16))
gp = cl.geometric_product
print("e_i^2 =", [float(gp(cl.basis(i), cl.basis(i))[0]) for i in (1, 2, 3, 4)], "(metric + + + -)")
print("associativity  max |(ab)c - a(bc)|       ", float(jnp.abs(gp(gp(a, b), c) - gp(a, gp(b, c))).max()))
print("4x4 representation max |M(ab) - M(a)M(b)| ", float(jnp.abs(cl.to_matrix(gp(a, b)) - cl.to_matrix(a) @ cl.to_matrix(b)).max()))
print("reverse is an anti-automorphism          ", float(jnp.abs(cl.reverse(gp(a, b)) - gp(cl.reverse(b), cl.reverse(a))).max()))
print("Grace weight per blade:", np.round(np.asarray(grace.grace_weights()), 3))

table = np.array([[int(np.argmax(np.abs(gp(cl.basis(i), cl.basis(j))))) * float(np.sign(gp(cl.basis(i), cl.basis(j)).sum()))
                   for j in range(16)] for i in range(16)])
fig, ax = plt.subplots(figsize=(4.2, 4.2))
ax.imshow(np.sign(table) * (np.abs(table) + 1), cmap="coolwarm")
ax.set(title="Cayley table: blade index x sign", xlabel="b", ylabel="a")
plt.show()'''),
    new_markdown_cell("## SO(4) binding: exact for one pair at any length\n\nContext = ordered product of Haar "
                      "rotations; unbinding is `Cᵀ M`."),
    new_code_cell('''\
emb = so4.haar_so4(jax.random.PRNGKey(1), (256,))
print("Haar embeddings: max |det - 1|", float(jnp.abs(jnp.linalg.det(emb) - 1).max()),
      " max |R^T R - I|", float(jnp.abs(jnp.swapaxes(emb, 1, 2) @ emb - jnp.eye(4)).max()))
for length in (4, 64, 1024):
    ctx = jax.random.randint(jax.random.PRNGKey(length), (length,), 0, 256)
    C = so4.context_product(emb[ctx], axis=0)
    memory = so4.bind(C, emb[42])  # one stored pair
    scores = (so4.unbind(memory, C).reshape(1, 16) @ emb.reshape(256, 16).T)[0]
    print(f"context length {length:5d}: recalled token {int(jnp.argmax(scores))} (stored 42), "
          f"orthogonality drift {float(jnp.abs(C.T @ C - jnp.eye(4)).max()):.1e}")'''),
    new_markdown_cell("## Capacity: how many pairs one superposition holds\n\nOne bucket, no routing: n random "
                      "(context, target) pairs summed into a 4×4 matrix (16 floats), against HRR and FHRR traces of "
                      "16 floats, vocabulary 1024. Every stored pair is queried."),
    new_code_cell('''\
from hqf_jax.holo import baselines as bl

V, L, TRIALS, NMAX = 1024, 4, (16 if TINY else 32) if SMALL else 256, 8
emb = so4.haar_so4(jax.random.PRNGKey(2), (V,))
fh = bl.fhrr_codebook(jax.random.PRNGKey(3), V, 16)  # 8 phases: 8 complex numbers = 16 floats
hr = bl.hrr_codebook(jax.random.PRNGKey(4), V, 16)

@jax.jit
def recall(ctx, tgt, n):  # ctx (TRIALS, NMAX, L), tgt (TRIALS, NMAX); the first n pairs of each trial are stored
    live = jnp.arange(NMAX) < n
    C = so4.context_product(emb[ctx], axis=2)
    M = jnp.sum(jnp.where(live[None, :, None, None], C @ emb[tgt], 0.0), axis=1, keepdims=True)
    r = so4.unbind(M, C).reshape(TRIALS, NMAX, 16)
    holo = jnp.argmax(r @ emb.reshape(V, 16).T, -1) == tgt
    bucket = jnp.where(live[None, :], jnp.arange(TRIALS)[:, None], TRIALS).reshape(-1)  # dead pairs -> spare trace
    out = {"holo 4x4": holo}
    for name, book, init, store, scores in (("FHRR d=16", fh, bl.fhrr_init, bl.fhrr_store, bl.fhrr_scores),
                                             ("HRR d=16", hr, bl.hrr_init, bl.hrr_store, bl.hrr_scores)):
        dim = 16
        tr = store(init(TRIALS + 1, dim), book, ctx.reshape(-1, L), tgt.reshape(-1), bucket)
        out[name] = (jnp.argmax(scores(tr, book, ctx.reshape(-1, L), bucket), 1) == tgt.reshape(-1)).reshape(TRIALS, NMAX)
    return {k: jnp.sum(jnp.where(live[None, :], v, False)) / (TRIALS * n) for k, v in out.items()}

rng = np.random.default_rng(0)
ns = list(range(1, NMAX + 1))
curves = {}
for n in ns:
    ctx = jnp.asarray(rng.integers(0, V, (TRIALS, NMAX, L)), jnp.int32)
    tgt = jnp.asarray(rng.integers(0, V, (TRIALS, NMAX)), jnp.int32)
    for k, v in recall(ctx, tgt, n).items():
        curves.setdefault(k, []).append(float(v))
fig, ax = plt.subplots(figsize=(6, 3.5))
for k, ys in curves.items():
    ax.plot(ns, ys, marker="o", label=k)
ax.set(xlabel="pairs stored in 16 floats", ylabel="recall top-1", title=f"one superposition, vocabulary {V}")
ax.legend()
plt.show()
print({k: [round(y, 3) for y in ys[:4]] for k, ys in curves.items()})'''),
    new_markdown_cell("## A memory learned from bytes\n\n`configs/holo_tiny.py`: every (4 bytes → next byte) pair of "
                      "standard-library text goes into the tower and the episodic cache; dreaming consolidates "
                      "prototypes. Scored on held-out files beside an interpolated Kneser-Ney 5-gram that uses the "
                      "same 4 bytes of context, then sampled at temperature φ⁻¹."),
    new_code_cell('''\
from eval.holo_generate import generate as holo_generate, prompt_context
from hqf_jax import cli
from hqf_jax.data.catalog import load_corpus
from hqf_jax.holo import language, memory as hm
from hqf_jax.holo.ngram import KneserNey

hcfg = cli.load_config_file(os.path.join(CONFIGS, "holo_tiny.py" if SMALL else "holo.py"))
if SMALL and not TINY:  # 256 leaves, 16K cache slots: a toy memory (docs/holo.md has the full-size numbers)
    hcfg = cli.apply_overrides(hcfg, ["train.max_train_bytes=200000", "train.eval_bytes=8000"])
mcfg = hm.HoloConfig.from_dict(hcfg.memory.to_dict())
corpus = load_corpus(hcfg.data)
train_stream = language.spread(corpus.stream("train"), hcfg.train.max_train_bytes, chunk=1 << 16)
valid_stream = language.spread(corpus.stream("valid"), hcfg.train.eval_bytes, chunk=4096)
vectors = jnp.asarray(language.cooccurrence_vectors(train_stream, mcfg.vocab_size)) if mcfg.embedding == "grounded" else None
state = language.train_memory(hm.init_memory(mcfg, vectors), mcfg, train_stream, hcfg.train.batch_size, hcfg.train.dream_every)
ev = language.evaluate_memory(state, mcfg, valid_stream, min(hcfg.train.batch_size, 4096))
kn = KneserNey(order=5).fit(train_stream).evaluate(valid_stream)
print(f"{len(train_stream):,} training bytes, {int(state.n_stored):,} patterns stored, {len(valid_stream):,} held-out bytes")
print(f"holographic memory: top-1 {ev['top1_mixture']:.3f}, {ev['bpb']:.3f} bits/byte (cache hit rate {ev['episodic_hit_rate']:.2f})")
print(f"Kneser-Ney order 5: top-1 {kn['top1']:.3f}, {kn['bpb']:.3f} bits/byte")'''),
    new_code_cell('''\
prompt = b"def "
ids = holo_generate(state, jnp.asarray(prompt_context(prompt, mcfg.context_len)), jax.random.PRNGKey(0),
                    config=mcfg, length=(64 if TINY else 160) if SMALL else 400)
print((prompt + bytes(int(i) for i in ids)).decode("utf-8", "replace"))'''),
]

# ------------------------------------------------------------------------------------------ 05 grpo
NB05 = header("05_kolmogorov_grpo", "05 · The Kolmogorov compressor: a tiny GRPO run", """\
One byte-level policy plays C (source → code) and D (code → reconstruction); GRPO pays
`gate · fidelity(s, d) − λ · len(c)/len(s)`. The task runs on the shared trainer: rollouts happen in the
task's `batch_fn`, so checkpoints, resume and logging are the same as for the byte LM.
`configs/grpo_tiny.py` is a 1-layer RetNet from scratch on a structured toy source ("ab" units); it learns
the length charge and the source's letters, not an informative code (docs/kolmogorov.md).""") + [
    new_code_cell(setup()),
    new_code_cell('''\
import shutil

from hqf_jax import cli
from hqf_jax.rl.grpo_task import build_grpo_task
from hqf_jax.trainer.loop import train

WORKDIR = os.path.join(RUNS, "05_grpo")
shutil.rmtree(WORKDIR, ignore_errors=True)
cfg = cli.load_config_file(os.path.join(CONFIGS, "grpo_tiny.py"))
if SMALL:
    cfg = cli.apply_overrides(cfg, ["train.steps=60", "train.ckpt_every=30", "train.eval_every=1000", "train.sample_every=30"])
if TINY:
    cfg = cli.apply_overrides(cfg, ["train.steps=20", "train.ckpt_every=10", "train.sample_every=10"])
print("grpo:", cfg.grpo.variant, "| rl:", {k: cfg.rl[k] for k in ("source", "source_len", "group_size", "lam", "code_budget")})
task, driver = build_grpo_task(cfg, WORKDIR)
task.eval_fn = None  # held-out evaluation below (eval.kolmogorov_eval)
final = train(task, cfg.train, cfg.mesh, WORKDIR, cli.config_to_json(cfg))
print({k: round(v, 3) for k, v in final.items() if k.startswith("rl/") and k in ("rl/reward", "rl/fidelity", "rl/ratio")})'''),
    new_markdown_cell("## Reward curves\n\n`metrics.jsonl` holds the `rl/*` metrics the task logs every step "
                      "(reward mean, fidelity, code/source length ratio, gate, entropies)."),
    new_code_cell('''\
import numpy as np
import matplotlib.pyplot as plt

from hqf_jax.trainer.metrics import read_metrics

rows = [r for r in read_metrics(WORKDIR) if "rl/reward" in r]
steps = np.array([r["step"] for r in rows])
fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
for a, key in zip(ax, ("rl/reward", "rl/fidelity", "rl/ratio")):
    y = np.array([r[key] for r in rows])
    a.plot(steps, y, alpha=0.35)
    k = 10
    if len(y) >= k:
        a.plot(steps[k - 1:], np.convolve(y, np.ones(k) / k, "valid"), lw=2, label=f"mean of {k}")
    a.set(title=key, xlabel="step")
ax[0].legend()
plt.tight_layout()
plt.show()
hist = np.array([r for _, r in driver.reward_history])
q = max(1, len(hist) // 4)
print(f"mean reward: first {q} steps {hist[:q].mean():+.3f}, last {q} steps {hist[-q:].mean():+.3f}")'''),
    new_markdown_cell("## What the policy writes\n\nThe task logs (source, code, reconstruction, reward) samples "
                      "as text; then `eval.kolmogorov_eval.evaluate` compresses held-out sources at a fidelity "
                      "threshold beside zlib and lzma."),
    new_code_cell('''\
samples = [r for r in read_metrics(WORKDIR) if "sample" in r]
print(samples[-1]["sample"][:600] if samples else "(no samples logged)")

from eval.kolmogorov_eval import evaluate, table

report = evaluate(driver.policy(), cfg, num=(2 if TINY else 4) if SMALL else 16, samples=2 if SMALL else 4, threshold=0.5)
print(table(report))'''),
]

# ------------------------------------------------------------------------------------------ 06 restore
NB06 = header("06_restore", "06 · Restore an orbax checkpoint and continue, on the same or another mesh", """\
A run folder holds `config.json`, orbax `checkpoints/<step>/` (the newest K kept), `metrics.jsonl` and
tensorboard logs. The train state is (step, trainable parameters, optimizer state); batches are a pure
function of the step and per-step randomness is `fold_in(seed, step)`, so a resumed run is the same run.
Here: train, restore for evaluation (`lm_task.load_run`), check that resuming from an earlier checkpoint
reproduces the uninterrupted run bit for bit, then continue the run on another mesh: trained data-parallel (parameters replicated on every
device), continued with FSDP (every parameter split over the devices). On a CPU two devices are simulated with
`--xla_force_host_platform_device_count=2`; on a one-GPU runtime both meshes are that one device.""") + [
    new_code_cell(setup(pre='''\
# two simulated CPU devices for the mesh section; must be set before jax starts (no effect on GPUs)
if "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
''')),
    new_code_cell('''\
import shutil

import numpy as np

from hqf_jax import cli
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import train

RUN = os.path.join(RUNS, "06_restore")
shutil.rmtree(RUN, ignore_errors=True)
STEPS = (20 if TINY else 40) if SMALL else 400
cfg = cli.load_config_file(os.path.join(CONFIGS, "lm_tiny.py"))
cfg = cli.apply_overrides(cfg, [f"train.steps={STEPS}", f"train.ckpt_every={STEPS // 2}", "train.warmup_steps=5",
                                "data.batch_size=8", f"train.eval_every={STEPS}", f"train.sample_every={10 * STEPS}",
                                "train.eval_max_bytes=8192", "train.keep=5", "mesh.data=-1", "mesh.fsdp=1"]
                          + (["model.num_layers=1"] if TINY else []))
task, corpus = lm_task.build_task(cfg)
task.eval_fn = task.sample_fn = None  # evaluated below, from the checkpoint
final = train(task, cfg.train, cfg.mesh, RUN, cli.config_to_json(cfg))  # mesh data=-1: data parallel over every device
print(f"trained on {jax.device_count()} device(s), parameters replicated on each")
print("checkpoints:", sorted(int(s) for s in os.listdir(os.path.join(RUN, "checkpoints")) if s.isdigit()), "| files:", sorted(os.listdir(RUN)))'''),
    new_markdown_cell("## Restore for evaluation\n\n`load_run` rebuilds the model from `config.json` and restores "
                      "the newest (or a given) step."),
    new_code_cell('''\
from flax import nnx

def max_difference(m1, m2) -> float:
    a, b = jax.tree.leaves(nnx.state(m1, nnx.Param)), jax.tree.leaves(nnx.state(m2, nnx.Param))
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b, strict=True))

model, run_cfg, step = lm_task.load_run(RUN)
print(f"restored step {step}; max |parameter difference| to the model in memory: {max_difference(model, task.model)}")
evaluate = lm_task.make_eval_fn(corpus.stream("valid"), cfg.data.seq_len, cfg.data.batch_size, cfg.train.eval_max_bytes)
half, _, half_step = lm_task.load_run(RUN, step=STEPS // 2)
print(f"held-out bits/byte: step {half_step} {evaluate(half)['valid_bpb']:.4f}, step {step} {evaluate(model)['valid_bpb']:.4f}")'''),
    new_markdown_cell("## Resume is exact\n\nCopy the run, drop its last checkpoint, and train the copy again to the "
                      "same step: it resumes from the middle checkpoint and must land on the same parameters."),
    new_code_cell('''\
COPY = RUN + "_copy"
shutil.rmtree(COPY, ignore_errors=True)
shutil.copytree(RUN, COPY)
shutil.rmtree(os.path.join(COPY, "checkpoints", str(STEPS)))
task2, _ = lm_task.build_task(cfg, corpus)
task2.eval_fn = task2.sample_fn = None
train(task2, cfg.train, cfg.mesh, COPY, progress=False)
print(f"max |param difference| between the uninterrupted run and the resumed copy: {max_difference(task.model, task2.model)}")'''),
    new_markdown_cell("## Continue on another mesh\n\nThe mesh has axes (data, fsdp, tensor). The checkpoint "
                      "was written by a data-parallel run; here it is restored straight into shards over an "
                      "fsdp axis (each parameter's sharding comes from the logical-axis rules of "
                      "`hqf_jax.trainer.sharding`), then training continues on that mesh. A longer "
                      "`train.steps` also stretches the cosine schedule, so the continued steps see a new "
                      "learning-rate curve."),
    new_code_cell('''\
import jax.numpy as jnp

from hqf_jax.trainer import sharding as shd
from hqf_jax.trainer.checkpoint import Checkpointer
from hqf_jax.trainer.optim import make_optimizer

n = jax.device_count()
mesh_cfg = {"data": 1, "fsdp": n, "tensor": 1}  # was data=n: now every parameter is split over the fsdp axis
mesh = shd.make_mesh(mesh_cfg)
print("mesh", dict(mesh.shape), "over", n, "device(s)")

# restore by hand into the new shardings: abstract arrays that carry the target NamedShardings
_, params, _ = nnx.split(lm_task.build_model(cfg), nnx.Param, ...)
tx, _ = make_optimizer(cfg.train)
shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": jax.eval_shape(lambda p: p, params),
          "opt_state": jax.eval_shape(tx.init, params)}
target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shd.tree_shardings(shapes, mesh))
ckpt = Checkpointer(RUN, async_save=False)
state = ckpt.restore(ckpt.latest_step(), target)
ckpt.close()
for path, x in jax.tree_util.tree_flatten_with_path(state["params"])[0][:8]:
    print(f"{jax.tree_util.keystr(path).removesuffix('.value'):50s} {str(x.shape):10s} {x.sharding.spec}")

# the loop does the same when it resumes: continue the run on this mesh
more = cli.apply_overrides(cfg, [f"train.steps={STEPS + STEPS // 2}", f"train.eval_every={STEPS // 2}",
                                 "mesh.data=1", f"mesh.fsdp={n}"])
task3, _ = lm_task.build_task(more, corpus)
task3.sample_fn = None
final3 = train(task3, more.train, more.mesh, RUN, cli.config_to_json(more))
print(f"continued to step {final3['step']} on mesh {mesh_cfg}: held-out {final3['valid_bpb']:.4f} bits/byte")'''),
]

NOTEBOOKS = {
    "01_quickstart": NB01,
    "02_retnphi_bootstrap": NB02,
    "03_quantize": NB03,
    "04_holographic_memory": NB04,
    "05_kolmogorov_grpo": NB05,
    "06_restore": NB06,
}


def build(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": []},
    }
    for i, cell in enumerate(nb.cells):  # stable ids, so regenerating gives identical files
        cell["id"] = f"cell-{i:02d}"
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def main(argv: list[str]) -> None:
    names = argv or list(NOTEBOOKS)
    for name in names:
        path = HERE / f"{name}.ipynb"
        path.write_text(render(name))
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main(sys.argv[1:])
