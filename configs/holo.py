"""Holographic memory learned from the python standard library bytes (train.holo, eval.holo_generate)."""

import ml_collections

from hqf_jax.holo.memory import HoloConfig
from hqf_jax.ops.constants import NUM_BYTES, PHI_INV


def get_config():
    c = ml_collections.ConfigDict()
    c.workdir = "runs/holo"
    # memory: every field of hqf_jax.holo.memory.HoloConfig (unknown keys fail naming the valid ones)
    c.memory = ml_collections.ConfigDict(
        HoloConfig(
            # mixture weights and temperature: the values eval.holo_eval language picked on held-out bytes
            vocab_size=NUM_BYTES, context_len=4, levels=4, cache_capacity=1 << 20, proto_depth=4, proto_k=8,
            mix_episodic=0.1, mix_proto=0.9, temperature=PHI_INV**3, embedding="grounded",
        ).to_dict()
    )
    c.data = ml_collections.ConfigDict(dict(source="stdlib", valid_fraction=0.05, max_files=0, paths=""))
    c.train = ml_collections.ConfigDict(dict(max_train_bytes=1_000_000, batch_size=8192, dream_every=16, eval_bytes=50_000,
                                             compare_scores=[]))  # e.g. ["cosine", "vorticity"]: see train/holo.py
    return c
