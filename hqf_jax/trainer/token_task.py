"""The token-LM task: the framework's own pretrained token model for the RetNPhi bootstrap (issue 3).

No model hub is reachable, so `python -m train.token_lm` makes one: a byte-level BPE tokenizer trained
locally with `tokenizers` on the corpus, a Llama-style decoder (hqf_jax.nn.hf_decoder.HFDecoderLM built
from transformers' LlamaConfig values) trained on the shared loop, and the result saved in HF format
(config.json + model.safetensors + tokenizer.json/tokenizer_config.json) so it loads through exactly
hqf_jax.nn.hf_loading.load_hf_decoder, transformers' AutoModelForCausalLM and AutoTokenizer.

Run folder: tokenizer/ (trained once, reused on resume), tokens_{train,valid}.npy (the encoded
splits), checkpoints/, metrics.jsonl, hf/ (the export, written at the end).

This file holds the task itself (loss, evaluation, samples, the Task for the shared loop, train-and-export);
the tokenizer, splits and batches are in ``token_data``, the model, its FLOPs and the HF export in
``token_model``. Their public names are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hqf_jax.data.corpus import ByteCorpus
from hqf_jax.errors import DataError
from hqf_jax.nn.hf_decoder import HFDecoderLM
from hqf_jax.trainer.loop import Task, train
from hqf_jax.trainer.token_data import (  # noqa: F401 (re-exported: callers import them from token_task)
    SPECIAL_TOKENS, TokenWindowSampler, doc_texts, encode_docs, load_tokenizer, prepare_data, sample_docs,
    save_tokenizer, to_token_example, token_byte_lengths, train_tokenizer,
)
from hqf_jax.trainer.token_model import (  # noqa: F401 (re-exported: callers import them from token_task)
    LLAMA_KEYS, build_decoder, count_params, decoder_config, decoder_flops_per_token, llama_config, save_hf,
)

LN2 = float(np.log(2.0))


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


# ---------------------------------------------------------------------- task


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
