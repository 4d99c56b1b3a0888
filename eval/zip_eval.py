"""Zip-space: bpb on compressed streams beside the raw text, and whether what the model writes decodes.

    python -m eval.zip_eval --run runs/zip [--raw-run runs/zip_raw] [--samples 32] [--continuations 16]

For the run's format (zlib, lz77 or raw; read from its config):
  * held-out streams (chunks of held-out files): the model's bits per stream byte, and per byte of
    the text they encode, beside the stream's own size (8 x stream bytes / text bytes: what the
    compressor itself spends), gzip -9 / xz -9e of the text, and, with ``--raw-run``, the bits per
    text byte of a model trained on the raw text;
  * ``--samples`` streams generated from the format's first bytes (``78 DA`` / ``LZ77``): the share
    that decodes without error, the share that reaches a proper end (zlib: final block and
    checksum), how many bytes they decode to and how printable those are; beside the same for
    uniformly random bytes after the same start (the null: DEFLATE accepts some noise);
  * in-context continuation: the compressed stream of each held-out document's first half (zlib:
    up to a sync flush, byte for byte the start of its full stream; lz77: its first triples) is
    continued by the model; reported: the share whose result still decodes, how many new text
    bytes it adds, the longest common prefix of those with the document's true continuation, and
    examples. With ``--raw-run`` the raw-text model continues the raw first half for comparison.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hqf_jax import cli
from hqf_jax.data import zipspace as z
from hqf_jax.scoring.byte_bits import per_byte_bits
from hqf_jax.scoring.compressors import BASELINES
from hqf_jax.scoring.continuations import continue_bytes, sample_bytes
from hqf_jax.trainer import lm_task


def printable(data: bytes) -> float:
    if not data:
        return 0.0
    a = np.frombuffer(data, np.uint8)
    return float(((a >= 32) & (a < 127) | (a == 9) | (a == 10) | (a == 13)).mean())


def common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def cut_generated(fmt: str, stream: bytes) -> bytes:
    """A generated stream up to where the next document's stream would begin (lz77 has no end mark)."""
    if fmt == "lz77":
        k = stream.find(z.LZ_MAGIC, len(z.LZ_MAGIC))
        return stream if k < 0 else stream[:k]
    return stream


def decode_stats(fmt: str, streams: list[bytes]) -> dict:
    ds = [z.decode(fmt, cut_generated(fmt, s)) for s in streams]
    out = [d.data for d in ds]
    return {"decodes": float(np.mean([d.ok for d in ds])), "complete": float(np.mean([d.ok and d.complete for d in ds])),
            "decoded_bytes_mean": float(np.mean([len(o) for o in out])),
            "printable": float(np.mean([printable(o) for o in out if o])) if any(out) else 0.0,
            "examples": [o[:160].decode("latin-1") for o in out[:3]]}


def half_prefix(fmt: str, text: bytes, flush_every: int) -> tuple[bytes, int]:
    """(compressed prefix of about the first half of ``text``, how many text bytes it holds)."""
    if fmt == "zlib":
        segs = max(1, (len(text) // flush_every) // 2)
        return z.zlib_prefix(text, flush_every, segs), min(len(text), segs * flush_every)
    if fmt == "lz77":
        full = z.lz77_encode(text)
        pos, covered = len(z.LZ_MAGIC), 0
        while pos + 4 <= len(full) and covered < len(text) // 2:
            covered += full[pos + 2] + 1
            pos += 4
        return full[:pos], covered
    return text[: len(text) // 2], len(text) // 2


def continuation(model, fmt: str, docs: list[bytes], flush_every: int, length: int, seed: int,
                 temperature: float) -> dict:
    rows = []
    halves = [half_prefix(fmt, text, flush_every) for text in docs]
    conts = continue_bytes(model, [p for p, _ in halves], length, seed, temperature) if docs else []
    for text, (prefix, held), cont in zip(docs, halves, conts):
        d = z.decode(fmt, cut_generated(fmt, prefix + cont) if fmt == "lz77" else prefix + cont)
        new = d.data[held:] if d.data[:held] == text[:held] else b""
        rows.append({"ok": d.ok, "new_bytes": len(new), "lcp": common_prefix(new, text[held:]),
                     "printable": printable(new), "prompt_bytes": len(prefix), "new": new[:120].decode("latin-1"),
                     "truth": text[held:held + 120].decode("latin-1")})
    return {"docs": len(rows), "decodes": float(np.mean([r["ok"] for r in rows])),
            "new_bytes_mean": float(np.mean([r["new_bytes"] for r in rows])),
            "lcp_mean": float(np.mean([r["lcp"] for r in rows])),
            "printable": float(np.mean([r["printable"] for r in rows if r["new_bytes"]] or [0.0])),
            "examples": rows[:3]}


def measure(run: str, raw_run: str | None = None, step: int | None = None, samples: int = 32, length: int = 512,
            continuations: int = 16, cont_length: int = 256, temperature: float = 0.8, seed: int = 0,
            max_bytes: int = 1 << 16, out: str | None = None) -> dict:
    model, cfg, step = lm_task.load_run(run, step)
    fmt, flush = cfg.data.format, int(cfg.data.get("flush_every", 0))
    streams, texts = z.load_zipspace(cfg.data)
    # whole held-out documents up to max_bytes of *text*, so every format scores the same text
    docs, total = [], 0
    for (n, s), (_, t) in zip(streams.valid, texts.valid):
        if total + len(t) > max_bytes and docs:
            break
        docs.append((s, t))
        total += len(t)
    stream = np.frombuffer(b"".join(s for s, _ in docs), np.uint8)
    text = b"".join(t for _, t in docs)
    bits = per_byte_bits(model, stream, cfg.data.seq_len)
    r: dict = {"run": run, "step": step, "format": fmt, "flush_every": flush, "held_out_docs": len(docs),
               "stream_bytes": int(len(stream)), "text_bytes": len(text),
               "model_bits_per_stream_byte": float(bits.mean()),
               "model_bits_per_text_byte": float(bits.sum() / len(text)),
               "stream_size_bits_per_text_byte": 8.0 * len(stream) / len(text)}
    for name, fn in BASELINES.items():
        r[f"text {name}"] = fn(text)
    raw_model = None
    if raw_run:
        raw_model, raw_cfg, raw_step = lm_task.load_run(raw_run)
        r["raw_model_bits_per_text_byte"] = float(per_byte_bits(raw_model, np.frombuffer(text, np.uint8),
                                                                raw_cfg.data.seq_len).mean())
        r["raw_run"], r["raw_step"] = raw_run, raw_step

    start = z.stream_start(fmt)
    gen = [start + g for g in sample_bytes(model, start, samples, length, seed, temperature)]
    rng = np.random.default_rng(seed)
    noise = [start + rng.integers(0, 256, length, dtype=np.uint8).tobytes() for _ in range(samples)]
    r["generated"] = decode_stats(fmt, gen)
    r["random_bytes"] = decode_stats(fmt, noise)
    r["samples"], r["sample_length"], r["temperature"] = samples, length, temperature

    cdocs = [t for _, t in texts.valid if len(t) >= max(2 * flush, 256)][:continuations]
    r["continuation"] = continuation(model, fmt, cdocs, flush, cont_length, seed, temperature)
    if raw_model is not None:
        r["raw_continuation"] = continuation(raw_model, "raw", cdocs, flush, cont_length, seed, temperature)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "zip_eval.json").write_text(json.dumps(r, indent=2))
    return r


def print_report(r: dict) -> None:
    print(f"run {r['run']} (step {r['step']}), format {r['format']}"
          + (f", sync flush every {r['flush_every']} bytes" if r["format"] == "zlib" and r["flush_every"] else ""))
    print(f"held out: {r['held_out_docs']} documents, {r['stream_bytes']:,} stream bytes for {r['text_bytes']:,} text bytes")
    print(f"  model bits per stream byte          {r['model_bits_per_stream_byte']:.4f}")
    print(f"  model bits per text byte            {r['model_bits_per_text_byte']:.4f}")
    print(f"  the stream's own size, bits/text B  {r['stream_size_bits_per_text_byte']:.4f}")
    for k in BASELINES:
        print(f"  text {k:<30} {r[f'text {k}']:.4f}")
    if "raw_model_bits_per_text_byte" in r:
        print(f"  raw-text model, bits per text byte  {r['raw_model_bits_per_text_byte']:.4f}   ({r['raw_run']})")
    g, n = r["generated"], r["random_bytes"]
    print(f"\n{r['samples']} generated streams of {r['sample_length']} bytes (temperature {r['temperature']}) "
          "vs random bytes after the same start:")
    print(f"  decode without error     {g['decodes']:>7.1%}  {n['decodes']:>7.1%}")
    print(f"  reach a proper end       {g['complete']:>7.1%}  {n['complete']:>7.1%}")
    print(f"  decoded bytes (mean)     {g['decoded_bytes_mean']:>7.1f}  {n['decoded_bytes_mean']:>7.1f}")
    print(f"  printable share          {g['printable']:>7.1%}  {n['printable']:>7.1%}")
    for e in g["examples"][:2]:
        print(f"  decodes to: {e[:100]!r}")
    c = r["continuation"]
    print(f"\nin-context continuation of {c['docs']} held-out documents' compressed first halves:")
    print(f"  still decodes {c['decodes']:.1%}; new text bytes {c['new_bytes_mean']:.1f}; printable {c['printable']:.1%}; "
          f"common prefix with the truth {c['lcp_mean']:.1f} bytes")
    if "raw_continuation" in r:
        rc = r["raw_continuation"]
        print(f"  raw-text model on the raw first halves: common prefix {rc['lcp_mean']:.1f} bytes, "
              f"printable {rc['printable']:.1%}")
    for e in c["examples"][:2]:
        print(f"  truth: {e['truth'][:80]!r}\n  model: {e['new'][:80]!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--raw-run", default=None, help="a run of configs/zip_raw.py to put beside")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--continuations", type=int, default=16)
    p.add_argument("--cont-length", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-bytes", type=int, default=1 << 16, help="held-out text bytes to score (whole documents)")
    p.add_argument("--out", default=None, help="folder for zip_eval.json (default <run>/zip_eval)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    r = measure(a.run, a.raw_run, a.step, a.samples, a.length, a.continuations, a.cont_length, a.temperature, a.seed,
                a.max_bytes, a.out or str(Path(a.run) / "zip_eval"))
    if a.json:
        print(json.dumps(r))
    else:
        print_report(r)


if __name__ == "__main__":
    cli.run_main(main)
