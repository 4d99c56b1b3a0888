"""Images with a held-out class: bpb on seen and unseen classes, and "draws what it never saw" as a number.

    python -m eval.digits_eval --run runs/digits [--step S] [--per-class 20] [--out DIR]

Measures:
  * bits per byte of held-out images of the seen classes (the run's validation split) and of the
    held-out class, each image scored on its own from BOS; for the whole document and for its 64
    pixel bytes alone (the header names the class, so for the unseen class it is itself a surprise),
    beside gzip -9 / xz -9e of the same documents and xz given the training images;
  * prompted generation: ``--per-class`` images of every class from ``digit k\\nP5\\n8 8\\n16\\n``,
    classified by a scikit-learn SVM trained on real images of all ten classes (its accuracy on
    real held-out images is printed beside). The share classified as the prompted class is the
    score; for the held-out class chance is 10%, and the classes it is mistaken for are listed;
  * a PNG grid of samples, one row per class (``<out>/digits_samples.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hqf_jax import cli
from hqf_jax.data import digits
from hqf_jax.scoring.byte_bits import doc_bits
from hqf_jax.scoring.compressors import BASELINES, xz
from hqf_jax.scoring.continuations import sample_bytes
from hqf_jax.trainer import lm_task


def classifier(seed: int = 0):
    """(fitted SVM on 75% of the real images, its accuracy on the other 25%)."""
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    images, labels = digits.load_arrays()
    x = images.reshape(len(images), -1).astype(np.float64)
    xa, xb, ya, yb = train_test_split(x, labels, test_size=0.25, random_state=seed, stratify=labels)
    clf = SVC(gamma=0.001, C=10.0).fit(xa, ya)
    return clf, float((clf.predict(xb) == yb).mean())


def bpb_block(model, docs: list[bytes], train_bytes: bytes) -> dict[str, float]:
    bits = doc_bits(model, docs)
    head = len(digits.prompt(0))  # header + PGM header; pixels follow (one-digit labels)
    data = b"".join(docs)
    out = {"docs": len(docs), "model_bpb": float(np.nanmean(bits)), "model_pixel_bpb": float(np.nanmean(bits[:, head:])),
           "model_header_bits": float(np.nanmean(np.nansum(bits[:, :head], axis=1)))}
    for name, fn in BASELINES.items():
        out[name] = fn(data)
    out["xz | train"] = 8.0 * (len(xz(train_bytes + data)) - len(xz(train_bytes))) / len(data)
    return out


def render_grid(images: dict[int, list[np.ndarray]], holdout: int, path: Path, predicted: dict[int, list[int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(v) for v in images.values())
    fig, axes = plt.subplots(10, cols, figsize=(cols * 0.7, 10 * 0.75))
    for k in range(10):
        for j in range(cols):
            ax = axes[k, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images[k]) and images[k][j] is not None:
                ax.imshow(images[k][j], cmap="gray_r", vmin=0, vmax=digits.MAXVAL)
                ax.set_title(str(predicted[k][j]), fontsize=6, pad=1,
                             color="green" if predicted[k][j] == k else "red")
        axes[k, 0].set_ylabel(f"{k}" + (" (held out)" if k == holdout else ""), fontsize=7,
                              color="red" if k == holdout else "black", rotation=0, labelpad=28)
    fig.suptitle("prompted 'digit k': samples per class (title: SVM's label)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure(run: str, step: int | None = None, per_class: int = 20, temperature: float = 1.0, seed: int = 0,
            out: str | None = None, model=None, cfg=None) -> dict:
    if model is None:
        model, cfg, step = lm_task.load_run(run, step)
    corpus, held = digits.load_digits_corpus(int(cfg.data.holdout_class), float(cfg.data.valid_fraction))
    holdout = int(cfg.data.holdout_class)
    train_bytes = corpus.stream("train").tobytes()
    r: dict = {"run": run, "step": step, "holdout_class": holdout,
               "seen": bpb_block(model, [d for _, d in corpus.valid], train_bytes),
               "unseen": bpb_block(model, [d for _, d in held], train_bytes) if held else None}

    clf, real_acc = classifier(seed)
    r["classifier_real_accuracy"] = real_acc
    images: dict[int, list] = {}
    predicted: dict[int, list[int]] = {}
    per = {}
    bad_px = 0
    for k in range(10):
        gen = sample_bytes(model, digits.prompt(k), per_class, digits.SIDE * digits.SIDE, seed + 1000 * k, temperature,
                           batch=per_class)
        bad_px += sum(digits.pixel_errors(g) for g in gen)
        imgs = [np.minimum(np.frombuffer(g[:64].ljust(64, b"\0"), np.uint8), digits.MAXVAL).reshape(8, 8) for g in gen]
        pred = clf.predict(np.stack([i.reshape(-1) for i in imgs]).astype(np.float64)).astype(int).tolist()
        images[k], predicted[k] = imgs, pred
        per[k] = {"accuracy": float(np.mean([p == k for p in pred])),
                  "mistaken_for": {int(c): int(n) for c, n in zip(*np.unique(pred, return_counts=True)) if c != k}}
    r["per_class"] = per
    seen = [k for k in range(10) if k != holdout]
    r["seen_class_accuracy"] = float(np.mean([per[k]["accuracy"] for k in seen]))
    r["heldout_class_accuracy"] = per[holdout]["accuracy"] if 0 <= holdout < 10 else None
    r["pixel_bytes_out_of_range"] = bad_px / (10 * per_class * 64)
    r["samples_per_class"], r["temperature"] = per_class, temperature
    if out:
        outp = Path(out)
        outp.mkdir(parents=True, exist_ok=True)
        render_grid(images, holdout, outp / "digits_samples.png", predicted)
        (outp / "digits_eval.json").write_text(json.dumps(r, indent=2))
        r["grid"] = str(outp / "digits_samples.png")
    return r


def print_report(r: dict) -> None:
    print(f"run {r['run']}, step {r['step']}; class {r['holdout_class']} never seen in training")
    print(f"{'bits/byte':<22} {'seen classes':>13} {'held-out class':>15}")
    rows = [("model (whole doc)", "model_bpb"), ("model (pixels only)", "model_pixel_bpb"),
            ("model header bits/doc", "model_header_bits"), *[(k, k) for k in BASELINES], ("xz | train", "xz | train")]
    for label, key in rows:
        u = r["unseen"][key] if r["unseen"] else float("nan")
        print(f"{label:<22} {r['seen'][key]:>13.4f} {u:>15.4f}")
    print(f"\nprompted generation, {r['samples_per_class']} per class at temperature {r['temperature']}, "
          f"scored by an SVM ({r['classifier_real_accuracy']:.1%} on real held-out images):")
    for k, v in r["per_class"].items():
        tag = "  <- held out" if k == r["holdout_class"] else ""
        top = ", ".join(f"{c}:{n}" for c, n in sorted(v["mistaken_for"].items(), key=lambda x: -x[1])[:3])
        print(f"  digit {k}: {v['accuracy']:>6.1%} drawn as asked   (else {top or '-'}){tag}")
    print(f"  seen classes mean {r['seen_class_accuracy']:.1%}; held-out class {r['heldout_class_accuracy']:.1%} "
          f"(chance 10%); pixel bytes out of 0..16: {r['pixel_bytes_out_of_range']:.2%}")
    if r.get("grid"):
        print(f"  grid: {r['grid']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the PNG grid and JSON (default <run>/digits_eval)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    r = measure(a.run, a.step, a.per_class, a.temperature, a.seed, a.out or str(Path(a.run) / "digits_eval"))
    if a.json:
        print(json.dumps(r))
    else:
        print_report(r)


if __name__ == "__main__":
    cli.run_main(main)
