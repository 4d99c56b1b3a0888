"""Music from under 100 songs, scored: held-out bits beside gzip/xz, meter validity of samples, copying.

The evaluation behind ``python -m eval.music_eval`` (which prints it) and ``python -m studies.chamber``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hqf_jax.data import music
from hqf_jax.data.catalog import load_corpus
from hqf_jax.errors import ConfigError
from hqf_jax.scoring.byte_bits import per_byte_bits
from hqf_jax.scoring.compressors import BASELINES, xz
from hqf_jax.scoring.continuations import sample_bytes
from hqf_jax.trainer import lm_task


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
        # --best: the best-validation step the trainer recorded and kept out of rotation (early stopping)
        model, cfg, step = lm_task.load_run(run, "best" if best else step)
    corpus = load_corpus(cfg.data)
    held = corpus.stream("valid")[skip_bytes:skip_bytes + max_bytes]
    if not len(held):
        raise ConfigError(f"--skip-bytes {skip_bytes} leaves no held-out bytes (there are "
                              f"{len(corpus.stream('valid')):,}); lower it")
    bits = per_byte_bits(model, held, cfg.data.seq_len)
    train_bytes = corpus.stream("train").tobytes()
    r: dict = {"run": run, "step": step, "held_out_bytes": int(len(held)), "skip_bytes": skip_bytes,
               "model_bpb": float(bits.mean())}
    for name, fn in BASELINES.items():
        r[name] = fn(held.tobytes())
    r["xz | train"] = 8.0 * (len(xz(train_bytes + held.tobytes())) - len(xz(train_bytes))) / len(held)

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
