"""The token-LM task's data: the byte-level BPE tokenizer (trained locally with `tokenizers`, saved so
transformers' AutoTokenizer loads it), the encoded splits, the random token windows the loop trains on, and
``prepare_data``, which writes <workdir>/tokenizer and <workdir>/tokens_{train,valid}.npy once per run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hqf_jax.data.catalog import load_corpus
from hqf_jax.data.corpus import ByteCorpus
from hqf_jax.errors import ConfigError, DataError

SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}


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


# ---------------------------------------------------------------------- the run's tokenizer and splits


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
