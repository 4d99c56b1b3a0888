"""A tiny holographic memory for tests and smoke runs (seconds on CPU)."""

from configs import holo


def get_config():
    c = holo.get_config()
    c.workdir = "runs/holo_tiny"
    c.memory.update(dict(levels=2, cache_capacity=1 << 14, proto_depth=2))
    c.data.update(dict(max_files=20))
    c.train.update(dict(max_train_bytes=30_000, batch_size=2048, dream_every=4, eval_bytes=4_000))
    return c
