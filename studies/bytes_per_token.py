"""Bytes per token of a byte-level BPE tokenizer on held-out text: what turns a token decoder's tokens/s into
bytes/s beside a byte model (RetNPhi issue, generation figures).

    python -m studies.bytes_per_token [--vocab 4096,16384,32000] [--tokenizer HF_FOLDER] [--tokens-per-s 3489]

Trains a byte-level BPE (the recipe of train.token_lm) of each vocabulary size on the training split of the
default corpus (the Python standard library), or loads --tokenizer, and encodes the validation split: bytes per
token = validation bytes / tokens. With --tokens-per-s, prints the bytes/s each tokenizer implies.
"""

from __future__ import annotations

import argparse

from hqf_jax import cli
from hqf_jax.report import write_report
from hqf_jax.data.sources import load_stdlib
from hqf_jax.trainer import token_task


def bytes_per_token(tokenizer, docs) -> float:
    n_tokens = len(token_task.encode_docs(tokenizer, docs)) - len(docs)  # encode_docs ends each document with EOS
    return sum(len(d) for _, d in docs) / max(n_tokens, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", default="4096,16384,32000", help="BPE sizes to train (ignored with --tokenizer)")
    p.add_argument("--tokenizer", default=None, help="an HF folder whose tokenizer to measure instead")
    p.add_argument("--tokens-per-s", type=float, default=None, help="a decoder's measured tokens/s to convert")
    p.add_argument("--valid-fraction", type=float, default=0.05)
    p.add_argument("--out", default="runs/studies/bytes_per_token", help="folder for table.md and results.json")
    a = p.parse_args(argv)
    corpus = load_stdlib(a.valid_fraction)
    if a.tokenizer:
        tokenizers = [(a.tokenizer, token_task.load_tokenizer(a.tokenizer))]
    else:
        texts = token_task.doc_texts(corpus.train)
        tokenizers = [(f"BPE {v}", token_task.train_tokenizer(texts, int(v))) for v in a.vocab.split(",")]
    valid_bytes = sum(len(d) for _, d in corpus.valid)
    lines = [f"held-out text: {len(corpus.valid)} documents, {valid_bytes:,} bytes ({corpus.description})",
             "| tokenizer | bytes per token |" + (" bytes/s at the given tokens/s |" if a.tokens_per_s else ""),
             "|---|---|" + ("---|" if a.tokens_per_s else "")]
    rows = []
    for name, tok in tokenizers:
        bpt = bytes_per_token(tok, corpus.valid)
        rows.append({"tokenizer": name, "bytes_per_token": bpt})
        extra = f" {a.tokens_per_s * bpt:,.0f} |" if a.tokens_per_s else ""
        lines.append(f"| {name} | {bpt:.3f} |{extra}")
    print("\n".join(lines))
    print(f"[study] -> {write_report(a.out, chr(10).join(lines), {'valid_bytes': valid_bytes, 'rows': rows})}")

if __name__ == "__main__":
    cli.run_main(main)
