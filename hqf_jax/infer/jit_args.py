"""The model as an argument of the engine's jitted stages, cheap to pass on every call.

A jitted stage takes the model as (graphdef, weights): the graphdef is a static argument, so jit hashes it on
every call, and flax hashes a GraphDef by walking its whole tree (milliseconds for a 12-layer model, on the
host, per decode chunk); the weights are an nnx.State, flattened in Python on every call. ``Prepared`` is
hashed once and compared by identity, and carries the weights' tree structure so that a stage can take the
weights as a flat list of arrays (flattened in C++; ``flat_weights``). The stages take either form: ``model_of``
rebuilds the module from both. ``Prepared`` holds no arrays: jit keeps its static arguments in its cache, so an
array held there would outlive the engine (device memory that ``del engine`` never frees).
"""

from __future__ import annotations

import jax
from flax import nnx


class Prepared:
    """A graphdef hashed once, with the tree structure of the weights passed beside it as a flat list (the
    structure only: no arrays, see the module docstring)."""

    def __init__(self, graphdef, weights):
        self.graphdef = graphdef
        self.treedef = jax.tree.structure(weights)
        self._hash = hash(graphdef)  # the weights' tree follows from the graphdef

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (isinstance(other, Prepared) and self.graphdef == other.graphdef
                                 and self.treedef == other.treedef)


def flat_weights(weights) -> list:
    """The weights as the flat list of arrays a stage takes beside their ``Prepared``."""
    return jax.tree.leaves(weights)


def model_of(graphdef, weights) -> nnx.Module:
    """The module from (graphdef, nnx.State) or (Prepared, its flat list of weight arrays)."""
    if isinstance(graphdef, Prepared):
        return nnx.merge(graphdef.graphdef, jax.tree.unflatten(graphdef.treedef, weights))
    return nnx.merge(graphdef, weights)
