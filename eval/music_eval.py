"""Music from under 100 songs: held-out bpb beside gzip/xz, and what the model writes.

    python -m eval.music_eval --run runs/music [--best | --step S] [--samples 32] [--out DIR]

Measures, on the run's held-out tunes (tunes of the collection it never trained on):
  * bits per byte of the model, of gzip -9 and xz -9e on the same bytes, and of xz given the
    training tunes (bits of xz(train + held-out) minus xz(train)): a compressor with the same prior;
  * for ``--samples`` tunes generated from ``X:1\\nT:``: the share music21 parses, the share whose
    bars add up to the meter (``hqf_jax.data.music.check_meter``), the share of bars that fit in
    the tunes that parse, beside the same for as many real held-out tunes (the ceiling the check
    gives real music);
  * MIDI files of every parseable sample (``<out>/midi``) and the samples as text (``<out>/samples.abc``);
  * copying: the longest common substring of each sample's body (after the K: line) with the
    training tunes, beside the same for real held-out tunes (what unrelated real tunes share by chance).

``--best`` scores the checkpoint with the lowest logged validation bpb (early stopping).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from eval.compressors import BASELINES, xz_bpb
from hqf_jax import cli
from hqf_jax.data import music
from hqf_jax.data.batching import to_example
from hqf_jax.data.sources import load_corpus
from hqf_jax.errors import CheckpointError
from hqf_jax.nn import generate
from hqf_jax.ops.constants import NUM_BYTES
from hqf_jax.ops.sampling import sample_token
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.checkpoint import Checkpointer
from hqf_jax.trainer.metrics import read_metrics

LN2 = float(np.log(2.0))


# ------------------------------------------------------------------------------- shared scoring


@nnx.jit
def _nll(model, inputs, targets):
    return optax.softmax_cross_entropy_with_integer_labels(model(inputs), targets)


def per_byte_bits(model, stream: np.ndarray, seq_len: int, batch_size: int = 16) -> np.ndarray:
    """Bits of every byte of ``stream`` under the model, read as consecutive windows of ``seq_len``
    (each from BOS, as in training and eval.bpb); the last, shorter window is padded and masked.
    One jitted shape (batch_size, seq_len) for the whole stream."""
    stream = np.asarray(stream, np.uint8)
    n = len(stream)
    nw = -(-n // seq_len)
    nb = -(-nw // batch_size)
    padded = np.zeros(nb * batch_size * seq_len, np.uint8)
    padded[:n] = stream
    windows = padded.reshape(nb * batch_size, seq_len)
    out = []
    for i in range(nb):
        ex = to_example(windows[i * batch_size:(i + 1) * batch_size])
        out.append(np.asarray(_nll(model, jnp.asarray(ex["inputs"]), jnp.asarray(ex["targets"]))))
    return (np.concatenate(out).reshape(-1)[:n] / LN2).astype(np.float64)


def doc_bits(model, docs: list[bytes], batch_size: int = 32) -> np.ndarray:
    """(n_docs, max_len) bits per byte of each document scored on its own, from BOS (NaN past its end)."""
    width = max(len(d) for d in docs)
    rows = np.zeros((len(docs), width), np.uint8)
    for i, d in enumerate(docs):
        rows[i, :len(d)] = np.frombuffer(d, np.uint8)
    nb = -(-len(docs) // batch_size)
    rows_p = np.zeros((nb * batch_size, width), np.uint8)
    rows_p[: len(docs)] = rows
    out = []
    for i in range(nb):
        ex = to_example(rows_p[i * batch_size:(i + 1) * batch_size])
        out.append(np.asarray(_nll(model, jnp.asarray(ex["inputs"]), jnp.asarray(ex["targets"]))))
    bits = np.concatenate(out)[: len(docs)] / LN2
    lens = np.array([len(d) for d in docs])
    bits = bits.astype(np.float64)
    bits[np.arange(width)[None, :] >= lens[:, None]] = np.nan
    return bits


def sample_bytes(model, prompt: bytes, n: int, length: int, seed: int, temperature: float, top_p: float = 1.0,
                 batch: int = 32) -> list[bytes]:
    """``n`` continuations of ``prompt`` (``length`` bytes each), in batches of one jitted shape."""
    ids = generate.encode_prompt(prompt)
    out = []
    for i in tqdm(range(0, n, batch), desc="sampling", leave=False):
        prompts = jnp.asarray(np.tile(ids, (batch, 1)))
        toks = generate.sample(model, prompts, length, jax.random.PRNGKey(seed + i), temperature=temperature,
                               top_p=top_p)
        out += [generate.decode(row) for row in np.asarray(toks)]
    return out[:n]


def _continue_rows(graphdef, mstate, ids, lens, keys, num_steps: int, temperature: float, top_p: float):
    """Per row (vmapped, so each row has its own position offset): read ids[:len] one recurrent step
    at a time (steps past len leave the state alone), then sample ``num_steps`` bytes."""
    vocab = NUM_BYTES

    def pick(key, logits):
        return sample_token(key, logits, temperature, 0, top_p, vocab_limit=vocab)

    def row(ids, n, key):
        model = nnx.merge(graphdef, mstate)
        state = model.init_state(1)

        def read(carry, i):
            st, lg = carry
            lg2, st2 = model.step(ids[i][None], st)
            keep = i < n
            return (jax.tree.map(lambda a, b: jnp.where(keep, a, b), st2, st), jnp.where(keep, lg2, lg)), None

        (state, logits), _ = jax.lax.scan(read, (state, jnp.zeros((1, model.cfg.vocab_size), jnp.float32)),
                                          jnp.arange(ids.shape[0]))
        first = pick(jax.random.fold_in(key, 0), logits)

        def body(carry, i):
            tok, st = carry
            lg, st = model.step(tok, st)
            return (pick(jax.random.fold_in(key, i + 1), lg), st), tok[0]

        _, toks = jax.lax.scan(body, (first, state), jnp.arange(num_steps))
        return toks

    return jax.vmap(row)(ids, lens, keys)


_continue_jit = jax.jit(_continue_rows, static_argnums=(0, 5, 6, 7))


def continue_bytes(model, prompts: list[bytes], length: int, seed: int, temperature: float, top_p: float = 1.0,
                   bucket: int = 128) -> list[bytes]:
    """Continuations of prompts of different lengths in one batch (prompt lengths padded up to a
    multiple of ``bucket``, so one compile serves many prompts); each prompt starts from BOS."""
    rows = [generate.encode_prompt(p) for p in prompts]
    width = -(-max(len(r) for r in rows) // bucket) * bucket
    ids = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    lens = jnp.asarray([len(r) for r in rows], jnp.int32)
    keys = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(len(rows))])
    graphdef, mstate = nnx.split(model)
    toks = _continue_jit(graphdef, mstate, jnp.asarray(ids), lens, keys, int(length), float(temperature), float(top_p))
    return [generate.decode(t) for t in np.asarray(toks)]


def best_step(workdir: str | Path, metric: str = "valid_bpb") -> int:
    """The step with the lowest logged ``metric`` that still has a checkpoint (early stopping)."""
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        saved = set(ckpt.all_steps())
    finally:
        ckpt.close()
    rows = [(r[metric], r["step"]) for r in read_metrics(workdir) if metric in r and r["step"] in saved]
    if not rows:
        raise CheckpointError(f"{workdir} has no checkpoint at a step with a logged {metric}; "
                              "set train.ckpt_every = train.eval_every and a large train.keep when training")
    return min(rows)[1]


# ------------------------------------------------------------------------------- copying


class SuffixAutomaton:
    """Suffix automaton of a byte string: ``longest_common_substring(q)`` in O(len(q))."""

    def __init__(self, data: bytes):
        self.next: list[dict[int, int]] = [{}]
        self.link, self.len = [-1], [0]
        last = 0
        for c in data:
            cur = len(self.len)
            self.next.append({})
            self.len.append(self.len[last] + 1)
            self.link.append(0)
            p = last
            while p != -1 and c not in self.next[p]:
                self.next[p][c] = cur
                p = self.link[p]
            if p != -1:
                q = self.next[p][c]
                if self.len[p] + 1 == self.len[q]:
                    self.link[cur] = q
                else:
                    clone = len(self.len)
                    self.next.append(dict(self.next[q]))
                    self.len.append(self.len[p] + 1)
                    self.link.append(self.link[q])
                    while p != -1 and self.next[p].get(c) == q:
                        self.next[p][c] = clone
                        p = self.link[p]
                    self.link[q] = self.link[cur] = clone
            last = cur

    def longest_common_substring(self, q: bytes) -> int:
        v, length, best = 0, 0, 0
        for c in q:
            while v and c not in self.next[v]:
                v = self.link[v]
                length = self.len[v]
            if c in self.next[v]:
                v = self.next[v][c]
                length += 1
            best = max(best, length)
        return best


def tune_body(text: str) -> str:
    """The music of a tune: everything after its K: header line (the whole text if none)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("K:"):
            return "\n".join(lines[i + 1:])
    return text


# ------------------------------------------------------------------------------- the eval


def validity(tunes: list[str]) -> dict[str, float]:
    checks = [music.check_meter(t) for t in tqdm(tunes, desc="music21", leave=False)]
    n = max(len(checks), 1)
    parsed = [c for c in checks if c.parsed and c.bars]
    good = float(np.mean([1.0 - c.bad_bars / c.bars for c in parsed])) if parsed else 0.0
    return {"parse": sum(c.parsed for c in checks) / n, "meter": sum(c.valid for c in checks) / n,
            "good_bars": good, "checks": checks}


def copying(sam: SuffixAutomaton, tunes: list[str]) -> dict[str, float]:
    bodies = [tune_body(t).encode() for t in tunes]
    lcs = np.array([sam.longest_common_substring(b) for b in bodies], np.float64)
    frac = np.array([lc / max(len(b), 1) for lc, b in zip(lcs, bodies)])
    return {"lcs_median": float(np.median(lcs)), "lcs_max": float(lcs.max()), "lcs_frac_median": float(np.median(frac)),
            "copies": float((frac >= 0.5).mean())}


def measure(run: str, step: int | None = None, best: bool = False, samples: int = 32, length: int = 500,
            temperature: float = 0.8, seed: int = 0, max_bytes: int = 1 << 16, out: str | None = None,
            model=None, cfg=None, skip_bytes: int = 0) -> dict:
    if model is None:
        if best:
            step = best_step(run)
        model, cfg, step = lm_task.load_run(run, step)
    corpus = load_corpus(cfg.data)
    held = corpus.stream("valid")[skip_bytes:skip_bytes + max_bytes]
    if not len(held):
        raise cli.ConfigError(f"--skip-bytes {skip_bytes} leaves no held-out bytes (there are "
                              f"{len(corpus.stream('valid')):,}); lower it")
    bits = per_byte_bits(model, held, cfg.data.seq_len)
    train_bytes = corpus.stream("train").tobytes()
    r: dict = {"run": run, "step": step, "held_out_bytes": int(len(held)), "skip_bytes": skip_bytes,
               "model_bpb": float(bits.mean())}
    for name, fn in BASELINES.items():
        r[name] = fn(held.tobytes())
    r["xz | train"] = 8.0 * (len(_xz(train_bytes + held.tobytes())) - len(_xz(train_bytes))) / len(held)

    gen = sample_bytes(model, music.TUNE_PROMPT.encode(), samples, length, seed, temperature)
    tunes = [music.cut_tune(g.decode("latin-1")) for g in gen]
    real = [d.decode("latin-1") for _, d in corpus.valid[:samples]]
    v_gen, v_real = validity(tunes), validity(real)
    r.update({"samples": len(tunes), "temperature": temperature, "sample_parse": v_gen["parse"],
              "sample_meter": v_gen["meter"], "real_parse": v_real["parse"], "real_meter": v_real["meter"],
              "sample_good_bars": v_gen["good_bars"], "real_good_bars": v_real["good_bars"],
              "sample_ended": float(np.mean([t.endswith("\n\n") for t in tunes]))})
    sam = SuffixAutomaton(b"\x00".join(tune_body(d.decode("latin-1")).encode() for _, d in corpus.train))
    r.update({f"sample_{k}": v for k, v in copying(sam, tunes).items()})
    r.update({f"real_{k}": v for k, v in copying(sam, real).items()})
    r["midi_written"] = 0
    if out:
        outp = Path(out)
        (outp / "midi").mkdir(parents=True, exist_ok=True)
        (outp / "samples.abc").write_text("".join(t if t.endswith("\n\n") else t + "\n\n" for t in tunes))
        for i, (t, c) in enumerate(zip(tunes, v_gen["checks"])):
            if c.parsed:
                try:
                    music.parse_tune(t).write("midi", fp=str(outp / "midi" / f"sample_{i:03d}.mid"))
                    r["midi_written"] += 1
                except Exception:  # noqa: BLE001  (music21 may parse what it cannot render)
                    pass
        (outp / "music_eval.json").write_text(json.dumps(r, indent=2))
    passing = [t for t, c in zip(tunes, v_gen["checks"]) if c.valid]
    r["example_passes"] = bool(passing)
    r["example"] = passing[0] if passing else (tunes[0] if tunes else "")
    return r


def _xz(data: bytes) -> bytes:
    import lzma

    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)


def print_report(r: dict) -> None:
    skip = f", from byte {r['skip_bytes']:,} of the held-out stream" if r["skip_bytes"] else ""
    print(f"held-out tunes: {r['held_out_bytes']:,} bytes (run {r['run']}, step {r['step']}{skip})")
    print(f"{'method':<14} {'bits/byte':>10}")
    for k in ["model_bpb", *BASELINES, "xz | train"]:
        print(f"{'model' if k == 'model_bpb' else k:<14} {r[k]:>10.4f}")
    print(f"\n{r['samples']} samples at temperature {r['temperature']}:   generated   real held-out")
    print(f"  music21 parses                  {r['sample_parse']:>8.1%}   {r['real_parse']:>8.1%}")
    print(f"  bars add up to the meter        {r['sample_meter']:>8.1%}   {r['real_meter']:>8.1%}")
    print(f"  bars that fit (parsed tunes)    {r['sample_good_bars']:>8.1%}   {r['real_good_bars']:>8.1%}")
    print(f"  LCS with training (median)      {r['sample_lcs_median']:>8.0f}   {r['real_lcs_median']:>8.0f}  bytes")
    print(f"  LCS / body length (median)      {r['sample_lcs_frac_median']:>8.1%}   {r['real_lcs_frac_median']:>8.1%}")
    print(f"  copies (LCS >= half the body)   {r['sample_copies']:>8.1%}   {r['real_copies']:>8.1%}")
    print(f"  ended with a blank line         {r['sample_ended']:>8.1%}")
    print(f"  MIDI files written              {r['midi_written']:>8d}")
    head = "first sample that passes the meter check" if r["example_passes"] else "no sample passes; the first one"
    print(f"\n{head}:\n" + r["example"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--best", action="store_true", help="score the checkpoint with the lowest logged valid_bpb")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-bytes", type=int, default=1 << 16)
    p.add_argument("--skip-bytes", type=int, default=0,
                   help="score held-out bytes from here on (e.g. the run's train.eval_max_bytes: bytes that "
                        "early stopping and plateau triggers never looked at)")
    p.add_argument("--out", default=None,
                   help="folder for samples.abc, midi/ and music_eval.json (default <run>/music_eval)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    r = measure(a.run, a.step, a.best, a.samples, a.length, a.temperature, a.seed, a.max_bytes,
                a.out or str(Path(a.run) / "music_eval"), skip_bytes=a.skip_bytes)
    if a.json:
        print(json.dumps({k: v for k, v in r.items() if k != "example"}))
    else:
        print_report(r)


if __name__ == "__main__":
    cli.run_main(main)
