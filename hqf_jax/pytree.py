"""Small pytree helpers shared by the trainer, the sharding rules and the quantizer."""

from __future__ import annotations


def path_str(path) -> str:
    """'a/b/0/kernel' for a jax key path (dict keys, sequence indices and attributes alike)."""
    return "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)
