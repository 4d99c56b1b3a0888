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

from hqf_jax import cli
from hqf_jax.scoring.compressors import BASELINES
from hqf_jax.scoring.music import measure


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
