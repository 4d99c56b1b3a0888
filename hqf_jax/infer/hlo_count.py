"""Counting the ops of a compiled decode loop from its HLO text: what bounds a batch-1 step is the number of
kernels it launches, so this is the figure the fused step is judged by (bench.generate --count-ops)."""

from __future__ import annotations

import collections
import re

TRIVIAL = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}


def computations(text: str) -> dict[str, list[str]]:
    """HLO module text -> {computation name: its instruction lines}."""
    out, name, body = {}, None, []
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            parts = line.split()
            name, body = (parts[1] if parts[0] == "ENTRY" else parts[0]), []
        elif line.startswith("}") and name is not None:
            out[name] = body
            name = None
        elif name is not None:
            body.append(line)
    return out


def op_kinds(lines: list[str]) -> collections.Counter:
    """Top-level op kinds (fusion, dot, custom-call, sort, copy, ...) of a computation, trivial ones left out."""
    kinds = collections.Counter()
    for line in lines:
        m = re.search(r"=\s*(?:\([^=]*?\)|\S+)\s+([a-z][\w-]*)\(", line)
        if m and m.group(1) not in TRIVIAL:
            kinds[m.group(1)] += 1
    return kinds


def loop_body_ops(text: str) -> collections.Counter:
    """Op kinds of the body of the largest while loop in a compiled module (the decode loop's step)."""
    comps = computations(text)
    bodies = {m.group(1) for body in comps.values() for line in body for m in [re.search(r"body=(%[\w.\-]+)", line)]
              if m}
    if not bodies:
        raise ValueError("no while loop in this module")
    return max((op_kinds(comps[b]) for b in bodies if b in comps), key=lambda k: sum(k.values()))
