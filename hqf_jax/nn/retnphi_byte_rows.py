"""RetNPhi's byte rows from the token model: the checkpoint's tokenizer (load_tokenizer, check_tokenizer), the
byte string of every token (token_bytes) and the byte embedding / head rows (byte_rows_from_tokens: per byte, the
mean over the tokens that start with it; random_byte_rows otherwise). See hqf_jax.nn.retnphi's docstring.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from hqf_jax.nn.hf_decoder import HFDecoderLM
from hqf_jax.nn.retnphi_config import RetNPhiConfig, RetNPhiConfigError
from hqf_jax.ops.constants import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID, NUM_BYTES, PAD_ID

# files that hold a vocabulary (tokenizer_config.json alone does not: transformers then builds an empty one)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt", "tiktoken.model")
_NO_TOKENIZER_FIX = "or set model.retnphi.byte_init=random"


def load_tokenizer(folder: str):
    """The checkpoint folder's tokenizer for byte_init='tokens'; RetNPhiConfigError (one line) when the folder
    has none, it does not load, or it maps no token to bytes (the 'token' init would silently be random)."""
    if not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        raise RetNPhiConfigError(f"byte_init='tokens' needs the checkpoint's tokenizer and {folder} has none (no "
                                 f"{', '.join(TOKENIZER_FILES[:3])}); save it there with tokenizer.save_pretrained "
                                 f"{_NO_TOKENIZER_FIX}")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # transformers' messages span lines
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise RetNPhiConfigError(f"the tokenizer in {folder} does not load ({type(e).__name__}: {first}); "
                                 f"re-save it with tokenizer.save_pretrained {_NO_TOKENIZER_FIX}") from None
    check_tokenizer(tokenizer, folder)
    return tokenizer


def check_tokenizer(tokenizer, folder: str | None = None) -> None:
    """Refuse a tokenizer none of whose tokens map to bytes (empty vocabulary, specials only)."""
    if not any(token_bytes(tokenizer)):
        where = f" in {folder}" if folder else ""
        raise RetNPhiConfigError(f"the tokenizer{where} is empty (vocabulary {len(tokenizer)}, no token maps to bytes), "
                                 f"so byte_init='tokens' would be random; save the real tokenizer beside the weights "
                                 f"{_NO_TOKENIZER_FIX}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map used by byte-level BPE tokenizers."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def token_bytes(tokenizer) -> list[bytes | None]:
    """The byte string of every token id (None for special tokens and unmappable ones).

    Byte-level BPE: the token string through GPT-2's unicode->byte table. SentencePiece: '▁' is a space and
    <0xNN> is byte NN. Anything else: its UTF-8 encoding.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and "ByteLevel" in repr(backend.decoder)
    inverse = {ch: b for b, ch in _bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    out: list[bytes | None] = []
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if tok is None or i in special:
            out.append(None)
        elif byte_level:
            out.append(bytes(inverse[ch] for ch in tok) if all(ch in inverse for ch in tok) else None)
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            out.append(bytes([int(tok[3:5], 16)]))
        else:
            out.append(tok.replace("\u2581", " ").encode("utf-8") or None)
    return out


def _token_tables(decoder: HFDecoderLM) -> tuple[np.ndarray, np.ndarray]:
    emb = np.asarray(decoder.model.embed_tokens.weight[...].astype(jnp.float32))
    head = emb if decoder.lm_head is None else np.asarray(decoder.lm_head.weight[...].astype(jnp.float32))
    return emb, head


def random_byte_rows(decoder: HFDecoderLM, rcfg: RetNPhiConfig) -> tuple[np.ndarray, np.ndarray]:
    emb, head = _token_tables(decoder)
    rng = np.random.default_rng(rcfg.seed)
    e_std = rcfg.byte_init_std or float(emb.std())
    h_std = rcfg.byte_init_std or float(head.std())
    d = emb.shape[1]
    return (rng.normal(0, e_std, (BYTE_VOCAB_SIZE, d)).astype(np.float32),
            rng.normal(0, h_std, (BYTE_VOCAB_SIZE, d)).astype(np.float32))


def byte_rows_from_tokens(decoder: HFDecoderLM, tokenizer, rcfg: RetNPhiConfig) -> tuple[np.ndarray, np.ndarray]:
    """(embedding rows, head rows), each (BYTE_VOCAB_SIZE, D): per byte, the mean over tokens starting with it."""
    emb, head = _token_tables(decoder)
    rand_e, rand_h = random_byte_rows(decoder, rcfg)
    out_e, out_h = rand_e.copy(), rand_h.copy()
    groups: list[list[int]] = [[] for _ in range(NUM_BYTES)]
    for i, bs in enumerate(token_bytes(tokenizer)):
        if bs and i < emb.shape[0]:
            groups[bs[0]].append(i)
    for b, ids in enumerate(groups):
        if ids:
            out_e[b], out_h[b] = emb[ids].mean(0), head[ids].mean(0)
    for byte_id, tok_id in ((BOS_ID, tokenizer.bos_token_id), (EOS_ID, tokenizer.eos_token_id), (PAD_ID, tokenizer.pad_token_id)):
        if tok_id is not None and tok_id < emb.shape[0]:
            out_e[byte_id], out_h[byte_id] = emb[tok_id], head[tok_id]
    return out_e, out_h
