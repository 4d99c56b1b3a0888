"""Learn a holographic memory from a byte corpus and save it with orbax:

    python -m train.holo [--config configs/holo.py] [--workdir DIR] [key=value ...]

Every (context_len bytes -> next byte) pair of the training bytes is stored (tower + episodic
cache), dreaming consolidates prototypes every ``train.dream_every`` batches, the memory is
scored on held-out bytes (top-1, bits per byte) and saved to ``WORKDIR/memory``.

``train.compare_scores`` (a list of "cosine" / "vorticity") scores the same stored memory with each
retrieval score as well (the score changes retrieval only), reporting the arg-max top-1 (``predict``:
episodic hit first), the mixture arg-max, bits per byte and ``top1_sample``: one byte sampled from the
mixture at the config's temperature (phi^-1 in the notes) per position. Summary key ``compare``.
"""

import dataclasses
import json
import os

import jax.numpy as jnp

from hqf_jax import cli
from hqf_jax.data.catalog import load_corpus
from hqf_jax.errors import ConfigError
from hqf_jax.holo import language
from hqf_jax.holo import memory as hm
from hqf_jax.holo.checkpoint import save_memory


def main(argv=None):
    args, cfg = cli.parse_args(__doc__, "configs/holo.py", argv)
    workdir = args.workdir or cfg.workdir
    out = os.path.join(workdir, "memory")
    if os.path.exists(out):
        raise ConfigError(f"{out} already exists; pass a new --workdir or delete it")
    mcfg = hm.HoloConfig.from_dict(cfg.memory.to_dict())
    corpus = load_corpus(cfg.data)
    print(f"[holo] {corpus.summary()}")
    train = corpus.stream("train")
    train = language.spread(train, cfg.train.max_train_bytes, chunk=1 << 16) if cfg.train.max_train_bytes else train
    valid = corpus.stream("valid")
    valid = language.spread(valid, cfg.train.eval_bytes, chunk=4096) if cfg.train.eval_bytes else valid
    vectors = jnp.asarray(language.cooccurrence_vectors(train, mcfg.vocab_size)) if mcfg.embedding == "grounded" else None
    state = hm.init_memory(mcfg, vectors)
    state = language.train_memory(state, mcfg, train, cfg.train.batch_size, cfg.train.dream_every)
    ev = language.evaluate_memory(state, mcfg, valid, min(cfg.train.batch_size, 4096))
    ev.pop("bpb_grid", None)
    compare = {}
    for score in cfg.train.get("compare_scores", ()):
        c = dataclasses.replace(mcfg, score=score)
        r = language.evaluate_memory(state, c, valid, min(cfg.train.batch_size, 4096), sample_seed=mcfg.seed)
        r.pop("bpb_grid", None)
        compare[score] = r
        print(f"[holo] score={score}: top1 (predict) {r['top1']:.3f}, mixture arg-max {r['top1_mixture']:.3f}, "
              f"sampled at T={c.temperature:.3f} {r['top1_sample']:.3f}, bpb {r['bpb']:.3f}")
    summary = dict(train_bytes=int(len(train)), valid_bytes=int(len(valid)), corpus=corpus.description,
                   n_stored=int(state.n_stored), cache_size=int(state.cache.size), cache_dropped=int(state.cache.dropped),
                   valid_eval=ev, compare=compare, footprint=hm.memory_footprint(mcfg))
    save_memory(out, state, mcfg, extra=summary)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=float)
    print(f"[holo] stored {summary['n_stored']:,} patterns ({summary['cache_size']:,} distinct contexts cached, "
          f"{summary['cache_dropped']} dropped); valid top1={ev['top1']:.3f} bpb={ev['bpb']:.3f}; saved {out}")


if __name__ == "__main__":
    cli.run_main(main)
