"""The CC memory in the gradient (issue 17 item 4): the recurrent continual memory of the (C->D->V)->CC pattern.

Each source stream carries a memory m that C reads in its prompt (``<c m=MEMORY>s</c>``). After an episode the
next memory is a *compression by C* of (m + the group's best code). Before, that rewrite was one greedy rollout
outside the gradient (``kolmogorov.update_memories``). Here it is an episode of its own, trained by GRPO with the
main rows:

  source  u = m + best code             (what the memory must carry forward)
  C       G sampled rewrites m'_1..m'_G of at most ``memory_budget`` bytes (no constraints)
  D, V    d_i = D(m'_i); reward_i = fidelity(u, d_i) - lam * len(m'_i) / len(u)
  next m  the highest-reward rewrite of each group

so the policy is paid for memories that keep the stream's history decodable in few bytes, and its rows (C's and
D's, with their group advantages) join the GRPO batch.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
from flax import nnx

from hqf_jax.rl import kolmogorov as kg


def memory_config(cfg: kg.KolmogorovConfig) -> kg.KolmogorovConfig:
    """The memory episode's config: cdv, C's budget = memory_budget, D's = memory + code, no items."""
    return dataclasses.replace(cfg, pattern="cdv", code_budget=cfg.memory_budget, n_inject=0, n_ban=0,
                               recon_budget=cfg.memory_budget + cfg.code_budget,
                               fidelity="chrf" if cfg.fidelity in ("loglik", "gain") else cfg.fidelity)


def memory_episode(policy: nnx.Module, memories: Sequence[bytes], codes: Sequence[bytes], key: jax.Array,
                   cfg: kg.KolmogorovConfig) -> tuple[kg.Episode, list[bytes]]:
    """(episode of G sampled rewrites per stream, the next memories = each group's best rewrite)."""
    mcfg = memory_config(cfg)
    targets = [m + c for m, c in zip(memories, codes)]
    ep = kg.run_episode(policy, targets, key, mcfg)
    return ep, [c[: cfg.memory_budget] for c in kg.best_codes(ep, cfg.group_size)]
