"""The token-LM task: the framework's own pretrained token model for the RetNPhi bootstrap (issue 3).

No model hub is reachable, so `python -m train.token_lm` makes one: a byte-level BPE tokenizer trained
locally with `tokenizers` on the corpus, a Llama-style decoder (hqf_jax.nn.hf_decoder.HFDecoderLM built
from transformers' LlamaConfig values) trained on the shared loop, and the result saved in HF format
(config.json + model.safetensors + tokenizer.json/tokenizer_config.json) so it loads through exactly
hqf_jax.nn.hf_loading.load_hf_decoder, transformers' AutoModelForCausalLM and AutoTokenizer.

Run folder: tokenizer/ (trained once, reused on resume), tokens_{train,valid}.npy (the encoded
splits), checkpoints/, metrics.jsonl, hf/ (the export, written at the end).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hqf_jax.data.catalog import load_corpus
from hqf_jax.data.corpus import ByteCorpus
from hqf_jax.errors import ConfigError, DataError
from hqf_jax.nn.hf_decoder import DecoderConfig, HFDecoderLM
from hqf_jax.trainer.loop import Task, train

LN2 = float(np.log(2.0))
SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
LLAMA_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "hidden_act",
              "initializer_range", "attention_bias", "mlp_bias")


# ---------------------------------------------------------------------- tokenizer


def train_tokenizer(texts, vocab_size: int, min_frequency: int = 2):
    """Byte-level BPE (GPT-2's byte alphabet, lossless on any text) trained on `texts`, as a transformers
    fast tokenizer with <|bos|>, <|eos|>, <|pad|> (ids 0, 1, 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ConfigError(f"tokenizer.vocab_size {vocab_size} is below the 256 bytes + {len(SPECIAL_TOKENS)} specials; use >= 512")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(SPECIAL_TOKENS.values()))
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """tokenizer.json + tokenizer_config.json; the class is written as PreTrainedTokenizerFast so transformers
    4.x and 5.x AutoTokenizer both load it."""
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    path = folder / "tokenizer_config.json"
    tc = json.loads(path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(tc, indent=2, sort_keys=True))


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def token_byte_lengths(tokenizer) -> np.ndarray:
    """Bytes each token id stands for (0 for special tokens): turns nats per token into bits per byte."""
    from hqf_jax.nn.retnphi import token_bytes

    return np.array([len(b) if b else 0 for b in token_bytes(tokenizer)], np.int32)


def doc_texts(docs: list[tuple[str, bytes]]) -> list[str]:
    """The text of (name, bytes) documents, undecodable bytes replaced (what the tokenizer trains on and reads)."""
    return [d.decode("utf-8", "replace") for _, d in docs]


def encode_docs(tokenizer, docs: list[tuple[str, bytes]]) -> np.ndarray:
    """Every document's tokens followed by EOS, concatenated (int32)."""
    eos = tokenizer.eos_token_id
    parts = [np.asarray(e.ids + [eos], np.int32) for e in tokenizer.backend_tokenizer.encode_batch(doc_texts(docs))]
    return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


# ---------------------------------------------------------------------- batches


class TokenWindowSampler:
    """Random windows of `seq_len` token ids, a pure function of (seed, step); inputs start with BOS."""

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int, bos_id: int):
        if len(stream) < seq_len + 1:
            raise DataError(f"the training split holds {len(stream)} tokens, fewer than one window of data.seq_len={seq_len}; "
                            "use more data or a shorter data.seq_len")
        self.stream, self.seq_len, self.batch_size, self.seed, self.bos = stream.astype(np.int32), seq_len, batch_size, seed, bos_id

    def __call__(self, step: int, shard: int = 0, num_shards: int = 1) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.stream) - self.seq_len + 1, size=self.batch_size)
        per = self.batch_size // num_shards
        starts = starts[shard * per:(shard + 1) * per]
        return to_token_example(self.stream[starts[:, None] + np.arange(self.seq_len)[None, :]], self.bos)


def to_token_example(windows: np.ndarray, bos_id: int) -> dict[str, np.ndarray]:
    w = windows.astype(np.int32)
    return {"inputs": np.concatenate([np.full((w.shape[0], 1), bos_id, np.int32), w[:, :-1]], axis=1), "targets": w}


# ---------------------------------------------------------------------- model


def llama_config(model_cfg, tokenizer):
    """transformers.LlamaConfig from the config's model part and the tokenizer's vocabulary and special ids."""
    from transformers import LlamaConfig

    m = dict(model_cfg)
    bad = set(m) - set(LLAMA_KEYS)
    if bad:
        raise ConfigError(f"unknown model keys {sorted(bad)}; valid (LlamaConfig fields): {sorted(LLAMA_KEYS)}")
    if m.get("head_dim") in (None, 0):
        m.pop("head_dim", None)
    return LlamaConfig(**m, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def decoder_config(hf_config, dtype: str = "float32") -> DecoderConfig:
    """Compute in `dtype` (bfloat16 on a GPU), parameters always float32."""
    return DecoderConfig.from_hf(hf_config.to_dict(), dtype=dtype, param_dtype="float32")


def build_decoder(hf_config, seed: int, dtype: str = "float32") -> HFDecoderLM:
    return HFDecoderLM(decoder_config(hf_config, dtype), rngs=nnx.Rngs(seed))


def sample_docs(docs, max_bytes: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Documents of `docs` (a sequence) in a fixed random order until `max_bytes` are reached (0: all of them,
    in order); kept in their original order. A sample spread over the whole split, not its first folder."""
    if not max_bytes:
        return list(docs)
    picked, n = [], 0
    for i in np.random.default_rng(seed).permutation(len(docs)):
        if n >= max_bytes:
            break
        picked.append(int(i))
        n += len(docs[int(i)][1])
    return [docs[i] for i in sorted(picked)]


def count_params(model: nnx.Module) -> int:
    return sum(int(v.get_value().size) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def decoder_flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
    """Training FLOPs per token (3x forward): 6 x matmul params (embedding lookup excluded, head included)
    plus causal attention (scores and values, on average seq_len/2 keys per query)."""
    c = cfg
    attn = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim + c.num_heads * c.head_dim * c.hidden_size
    mlp = 3 * c.hidden_size * c.intermediate_size
    matmul = c.num_layers * (attn + mlp) + c.hidden_size * c.vocab_size
    scores = c.num_layers * c.num_heads * c.head_dim * seq_len  # 2 x (T/2) x hd multiply-adds per query and head
    return 6.0 * matmul + 6.0 * scores


# ---------------------------------------------------------------------- loss, eval, samples


def next_token_loss(model, batch, rng):
    del rng
    logits = model(batch["inputs"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    return loss, {"bits_per_token": loss / LN2}


def make_eval_fn(stream: np.ndarray, byte_lengths: np.ndarray, seq_len: int, batch_size: int, max_tokens: int, bos_id: int):
    """valid_loss (nats/token) and valid_bpb = total bits / bytes the target tokens stand for."""
    n = min(len(stream), max_tokens) // seq_len
    if n == 0:
        raise DataError(f"the validation split holds {len(stream)} tokens, fewer than one window of {seq_len}; "
                        "use more data, a larger data.valid_fraction or a shorter data.seq_len")
    windows = stream[: n * seq_len].reshape(n, seq_len)
    n_bytes = int(byte_lengths[windows].sum())

    @nnx.jit
    def nll_sum(model, inputs, targets):
        return optax.softmax_cross_entropy_with_integer_labels(model(inputs), targets).sum()

    def evaluate(model) -> dict[str, float]:
        total = 0.0
        for i in range(0, n, batch_size):
            ex = to_token_example(windows[i:i + batch_size], bos_id)
            total += float(nll_sum(model, jnp.asarray(ex["inputs"]), jnp.asarray(ex["targets"])))
        return {"valid_loss": total / windows.size, "valid_bpb": total / max(n_bytes, 1) / LN2,
                "valid_bytes_per_token": n_bytes / windows.size}

    return evaluate


@nnx.jit(static_argnames=("length", "temperature"))
def _sample_ids(model, prompt, key, length, temperature):
    cache = model.init_cache(prompt.shape[0], prompt.shape[1] + length)
    logits, cache = model.decode(prompt, cache)

    def pick(k, lg):
        return jax.random.categorical(k, lg / temperature).astype(jnp.int32) if temperature > 0 else jnp.argmax(lg, -1).astype(jnp.int32)

    first = pick(jax.random.fold_in(key, 0), logits[:, -1])

    def body(carry, i):
        tok, cache = carry
        logits, cache = model.decode(tok[:, None], cache)
        return (pick(jax.random.fold_in(key, i + 1), logits[:, -1]), cache), tok

    _, ids = jax.lax.scan(body, (first, cache), jnp.arange(length))
    return ids.T


def sample_text(model: HFDecoderLM, tokenizer, prompt: str, length: int, seed: int, temperature: float = 0.8) -> str:
    """`length` tokens after `prompt` (KV-cache decoding), decoded up to the first EOS."""
    ids = [tokenizer.bos_token_id] + tokenizer.backend_tokenizer.encode(prompt).ids
    out = np.asarray(_sample_ids(model, jnp.asarray([ids], jnp.int32), jax.random.PRNGKey(seed), length, float(temperature)))[0]
    out = out.tolist()
    if tokenizer.eos_token_id in out:
        out = out[: out.index(tokenizer.eos_token_id)]
    return prompt + tokenizer.decode(out, skip_special_tokens=True)


# ---------------------------------------------------------------------- HF export


def save_hf(model: HFDecoderLM, hf_config, tokenizer, folder: str | Path, info: dict | None = None) -> Path:
    """config.json + model.safetensors (HF names = the NNX paths, (out, in) layout) + tokenizer files
    [+ training.json with `info`]. Loads with load_hf_decoder and transformers' AutoModelForCausalLM."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(str(folder))
    tensors = {".".join(str(p) for p in path): np.ascontiguousarray(np.asarray(v.get_value(), np.float32))
               for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    save_tokenizer(tokenizer, folder)
    if info is not None:
        (folder / "training.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return folder


# ---------------------------------------------------------------------- task


def prepare_data(cfg, workdir: str | Path, corpus: ByteCorpus | None = None):
    """(tokenizer, train ids, valid ids): tokenizer trained once into <workdir>/tokenizer and the splits
    encoded once into <workdir>/tokens_*.npy, so a resumed run sees the same ids."""
    workdir = Path(workdir)
    tok_dir, paths = workdir / "tokenizer", {s: workdir / f"tokens_{s}.npy" for s in ("train", "valid")}
    if (tok_dir / "tokenizer.json").exists() and all(p.exists() for p in paths.values()):
        return load_tokenizer(tok_dir), np.load(paths["train"]), np.load(paths["valid"])
    corpus = corpus or load_corpus(cfg.data)
    print(f"[token_lm] {corpus.summary()}; training a {cfg.tokenizer.vocab_size}-token byte-level BPE")
    sample = sample_docs(corpus.train, int(cfg.tokenizer.get("sample_bytes", 0)))  # 0: the whole training split
    tokenizer = train_tokenizer(doc_texts(sample), int(cfg.tokenizer.vocab_size), int(cfg.tokenizer.min_frequency))
    workdir.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    streams = {s: encode_docs(tokenizer, corpus.train if s == "train" else corpus.valid) for s in paths}
    for s, p in paths.items():
        np.save(p, streams[s])
    return tokenizer, streams["train"], streams["valid"]


def build_task(cfg, workdir: str | Path, corpus: ByteCorpus | None = None):
    """(task, hf_config, tokenizer) for the shared loop."""
    tokenizer, train_ids, valid_ids = prepare_data(cfg, workdir, corpus)
    hf_config = llama_config(cfg.model, tokenizer)
    model = build_decoder(hf_config, cfg.train.seed, cfg.get("compute_dtype", "float32"))
    lengths = token_byte_lengths(tokenizer)
    bos = tokenizer.bos_token_id
    tokens_per_step = cfg.data.seq_len * cfg.data.batch_size
    sampler = TokenWindowSampler(train_ids, cfg.data.seq_len, cfg.data.batch_size, cfg.train.seed, bos)
    prompt, n_sample, seed = cfg.train.sample_prompt, cfg.train.sample_len, cfg.train.seed
    task = Task(
        model=model,
        loss_fn=next_token_loss,
        batch_fn=sampler,
        eval_fn=make_eval_fn(valid_ids, lengths, cfg.data.seq_len, cfg.data.batch_size, cfg.train.eval_max_tokens, bos),
        sample_fn=lambda m, step: sample_text(m, tokenizer, prompt, n_sample, seed + step),
        units_per_step=tokens_per_step,
        unit_name="tokens",
        flops_per_step=decoder_flops_per_token(model.cfg, cfg.data.seq_len) * tokens_per_step,
    )
    bpt = lengths[train_ids].sum() / max(len(train_ids), 1)
    print(f"[token_lm] {count_params(model):,} parameters, vocab {len(tokenizer)}; "
          f"{len(train_ids):,} train / {len(valid_ids):,} valid tokens, {bpt:.2f} bytes per token")
    return task, hf_config, tokenizer


def train_and_export(cfg, workdir: str | Path, config_json: str | None = None, corpus: ByteCorpus | None = None,
                     steps_for=None) -> tuple[dict, Path | None]:
    """Train the token model of ``cfg`` in ``workdir`` (resuming) and, when the run completed, write its HF folder
    ``<workdir>/hf`` (config, safetensors, tokenizer, training.json). Returns (the loop's final metrics, the HF
    folder, or None when a signal stopped the run first). What ``train.token_lm`` and the bootstrap study run.
    ``corpus`` replaces the one cfg.data names; ``steps_for(task)`` sets train.steps once the task is built."""
    workdir = Path(workdir)
    task, hf_config, tokenizer = build_task(cfg, workdir, corpus)
    if steps_for is not None:  # e.g. a study's time budget: steps from the task's FLOPs per step
        cfg.train.steps = int(steps_for(task))
    final = train(task, cfg.train, cfg.mesh, workdir, config_json)
    if final.get("signal"):
        return final, None
    info = {"steps": int(final["step"]), "tokens": int(final["step"]) * task.units_per_step,
            "train_flops": float(final["step"]) * task.flops_per_step, "params": count_params(task.model),
            "vocab": len(tokenizer),
            **{k: float(final[k]) for k in ("loss", "valid_loss", "valid_bpb", "valid_bytes_per_token") if k in final}}
    return final, save_hf(task.model, hf_config, tokenizer, workdir / "hf", info)
