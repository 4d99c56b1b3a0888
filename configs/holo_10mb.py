"""The notes' language run: a holographic memory learned from 10 MB of Python source, on one GPU.

    HQF_DATA_STORE=/tmp/store python -m train.holo --config configs/holo_10mb.py            # data in /tmp/pysrc
    python -m train.holo --config configs/holo_10mb.py data.source=stdlib                  # anywhere else

As the notes set it: tower depth L = 6 (16^6 leaf satellites), retrieval temperature phi^-1, and the
same stored memory scored with cosine and with the vorticity-weighted score (train.compare_scores:
arg-max top-1, mixture arg-max, a sample at phi^-1, bits per byte on 1 MB of held-out bytes).
10,000,000 training bytes spread over the corpus in 64 KiB chunks; an 8M-slot episodic cache
(160 MiB) holds the distinct 4-byte contexts. Writes WORKDIR/summary.json and WORKDIR/memory.
"""

from configs import holo
from hqf_jax.ops.constants import PHI_INV


def get_config():
    c = holo.get_config()
    c.workdir = "runs/holo_10mb"
    c.memory.update(dict(levels=6, cache_capacity=1 << 23, proto_depth=4, proto_k=8, temperature=PHI_INV,
                         embedding="grounded"))
    c.data.update(dict(source="files", paths="/tmp/pysrc", valid_fraction=0.05))
    c.train.update(dict(max_train_bytes=10_000_000, batch_size=1 << 16, dream_every=16, eval_bytes=1_000_000,
                        compare_scores=["cosine", "vorticity"]))
    return c
