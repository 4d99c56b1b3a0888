"""The Kolmogorov compressor: one policy plays Compressor C (source s -> code c) and Decompressor D
(c -> reconstruction d); a frozen verifier V scores (s, d); the reward pays fidelity and charges the
code's length (MDL pressure):

    reward = gate * fidelity(s, d) - lam * len(c) / len(s) - mu * (missing injections + used bans)

Patterns (``KolmogorovConfig.pattern``):
  cdv     C -> D -> V on fresh sources.
  ccv     C -> C -> V: the source is a past code from the :class:`HistoryBuffer`; V compares D's
          output with that past code (codes of codes: MDL pressure on the code language itself).
  cdv_cc  (C -> D -> V) -> CC: each source stream carries a memory m fed into C's prompt; after an
          episode, C compresses m + the group's best code into the next m (``update_memories``).
  cqav    C -> (Q -> A) -> V: questions about s are answered from c without decompressing; V scores
          each answer against the truth (``make_questions``: "what follows this snippet?").

Prompts are bytes (the byte LM's vocabulary, BOS first, EOS ends each completion):
  C: <c +i1|i2 -b1|b2 m=MEMORY>SOURCE</c>     (the +, - and m= parts only when present)
  D: <d>CODE</d>           A: <q>CODE|QUESTION</q>           loglik V: <v>RECON</v>SOURCE
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.ops.constants import EOS_ID, PAD_ID
from hqf_jax.rl.fidelity import FidelityKind, fidelity as byte_fidelity
from hqf_jax.rl.gate import GateConfig, code_gate
from hqf_jax.rl.history import HistoryBuffer
from hqf_jax.rl.rollout import (Rollout, SampleConfig, completion_bytes, encode_prompts, rollout,
                                teacher_forced_logprobs)

Pattern = Literal["cdv", "ccv", "cdv_cc", "cqav"]
PATTERNS = ("cdv", "ccv", "cdv_cc", "cqav")
DEFAULT_INJECT_VOCAB = tuple(bytes([b]) for b in range(ord("a"), ord("z") + 1))
# the whole byte vocabulary, less the three bytes that delimit the C prompt's fields
BYTE_INJECT_VOCAB = tuple(bytes([b]) for b in range(256) if b not in b"<>|")
INJECT_VOCABS = {"az": DEFAULT_INJECT_VOCAB, "bytes": BYTE_INJECT_VOCAB}


class KolmogorovConfigError(ValueError):
    """A Kolmogorov configuration that cannot work (the message names the fix)."""


@dataclasses.dataclass(frozen=True)
class KolmogorovConfig:
    pattern: Pattern = "cdv"
    group_size: int = 8
    lam: float = 0.5  # charge per unit of len(c) / len(s)
    fidelity: FidelityKind | Literal["loglik", "gain"] = "chrf"  # loglik / gain: a frozen model (verifier.py)
    code_budget: int = 32  # C's max_new_tokens
    recon_budget: int = 64  # D's (and A's) max_new_tokens
    prompt_width: int = 128  # every prompt padded to this many tokens: one compiled rollout
    c_temperature: float = 1.0
    c_top_p: float = 1.0
    d_temperature: float = 1.0
    d_greedy: bool = True  # D decodes with top_k=1 (V judges the code, not D's sampling noise)
    n_inject: int = 0  # start value; the RelaxationSchedule lowers it on plateaus
    n_ban: int = 0
    inject_vocab: tuple = DEFAULT_INJECT_VOCAB
    ban_len: int = 1  # banned items are substrings of s of this many bytes
    constraint_weight: float = 0.5  # mu
    gate: GateConfig = GateConfig()
    memory_budget: int = 16  # cdv_cc: max bytes of the memory
    n_questions: int = 2  # cqav: questions per code
    question_len: int = 3
    answer_len: int = 4
    rollout_impl: Literal["loop", "engine"] = "loop"  # rollout.py's step loop, or the generation engine

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise KolmogorovConfigError(f"pattern {self.pattern!r}: use one of {', '.join(PATTERNS)}")
        if self.fidelity not in ("chrf", "edit", "mean", "loglik", "gain"):
            raise KolmogorovConfigError(f"fidelity {self.fidelity!r}: use 'chrf', 'edit', 'mean', 'loglik' or 'gain'")
        if self.rollout_impl not in ("loop", "engine"):
            raise KolmogorovConfigError(f"rollout_impl {self.rollout_impl!r}: use 'loop' or 'engine'")
        if self.group_size < 2:
            raise KolmogorovConfigError(f"group_size={self.group_size}: GRPO needs >= 2 codes per source")

    @property
    def c_sample(self) -> SampleConfig:
        return SampleConfig(max_new_tokens=self.code_budget, temperature=self.c_temperature, top_p=self.c_top_p)

    @property
    def d_sample(self) -> SampleConfig:
        return SampleConfig(max_new_tokens=self.recon_budget, temperature=self.d_temperature,
                            top_k=1 if self.d_greedy else 0)


class Constraints(NamedTuple):
    inject: tuple[bytes, ...] = ()
    ban: tuple[bytes, ...] = ()


# ----------------------------------------------------------------------------- prompts


def compressor_prompt(source: bytes, constraints: Constraints = Constraints(), memory: bytes = b"") -> bytes:
    head = b"<c"
    if constraints.inject:
        head += b" +" + b"|".join(constraints.inject)
    if constraints.ban:
        head += b" -" + b"|".join(constraints.ban)
    if memory:
        head += b" m=" + memory
    return head + b">" + source + b"</c>"


def decompressor_prompt(code: bytes) -> bytes:
    return b"<d>" + code + b"</d>"


def answer_prompt(code: bytes, question: bytes) -> bytes:
    return b"<q>" + code + b"|" + question + b"</q>"


def verifier_prompt(recon: bytes) -> bytes:
    return b"<v>" + recon + b"</v>"


def prompt_tokens_needed(cfg: KolmogorovConfig, source_len: int) -> int:
    """The longest prompt (in tokens, BOS included) any episode of ``cfg`` can build from sources of at most
    ``source_len`` bytes: C's (items, memory, source; ccv re-compresses codes), D's, A's (cqav) and the cdv_cc
    memory rewrite's (kolmogorov.update_memories, or memory.memory_episode). ``prompt_width`` must be >= this."""
    def items(n: int, size: int) -> int:  # b" +" + n items joined by b"|"
        return 0 if n <= 0 else 2 + n * size + (n - 1)

    item = max((len(v) for v in cfg.inject_vocab), default=0)
    src = max(source_len, cfg.code_budget) if cfg.pattern == "ccv" else source_len
    mem = 3 + cfg.memory_budget if cfg.pattern == "cdv_cc" else 0
    c = 2 + items(cfg.n_inject, item) + items(cfg.n_ban, cfg.ban_len) + mem + 1 + src + 4
    d = 3 + cfg.code_budget + 4
    need = [c, d]
    if cfg.pattern == "cqav":
        need.append(3 + cfg.code_budget + 1 + cfg.question_len + 4)
    if cfg.pattern == "cdv_cc":  # the rewrite compresses memory + code (no items), then D decodes the memory
        need += [2 + 1 + cfg.memory_budget + cfg.code_budget + 4, 3 + cfg.memory_budget + 4]
    return 1 + max(need)


def check_prompt_width(cfg: KolmogorovConfig, source_len: int, key: str = "rl.prompt_width") -> None:
    """Raise KolmogorovConfigError (naming ``key``) when a prompt of ``cfg`` could exceed ``cfg.prompt_width``."""
    need = prompt_tokens_needed(cfg, source_len)
    if need > cfg.prompt_width:
        raise KolmogorovConfigError(
            f"{key}={cfg.prompt_width} is too small for pattern {cfg.pattern!r}: its longest prompt takes {need} "
            f"tokens (source_len={source_len}, code_budget={cfg.code_budget}, memory_budget={cfg.memory_budget}, "
            f"n_inject={cfg.n_inject}, n_ban={cfg.n_ban}): set {key}={need} or more")


# ----------------------------------------------------------------------------- augmentation


def sample_constraints(rng: np.random.Generator, source: bytes, n_inject: int, n_ban: int,
                       vocab: Sequence[bytes] = DEFAULT_INJECT_VOCAB, ban_len: int = 1) -> Constraints:
    """Ban n_ban distinct substrings of s (ban_len bytes each); inject n_inject distinct vocabulary
    items that are not banned. Fewer when s or the vocabulary has fewer candidates."""
    subs = sorted({source[i:i + ban_len] for i in range(len(source) - ban_len + 1)})
    ban = tuple(subs[i] for i in rng.permutation(len(subs))[:n_ban]) if n_ban > 0 else ()
    cand = [v for v in vocab if not any(b in v or v in b for b in ban)]
    inject = tuple(cand[i] for i in rng.permutation(len(cand))[:n_inject]) if n_inject > 0 else ()
    return Constraints(inject, ban)


def constraint_scores(code: bytes, c: Constraints) -> tuple[float, float]:
    """(fraction of injected items present in the code, fraction of banned items present)."""
    used = np.mean([it in code for it in c.inject]) if c.inject else 1.0
    banned = np.mean([b in code for b in c.ban]) if c.ban else 0.0
    return float(used), float(banned)


def make_questions(rng: np.random.Generator, source: bytes, n: int, q_len: int = 3,
                   a_len: int = 4) -> list[tuple[bytes, bytes]]:
    """n (question, answer) pairs about s: question = a snippet of s, answer = the a_len bytes after it."""
    hi = len(source) - q_len - a_len
    if hi < 0:
        raise KolmogorovConfigError(f"a source of {len(source)} bytes is shorter than question_len + answer_len "
                                    f"= {q_len + a_len}: use longer sources or shorter questions")
    starts = rng.integers(0, hi + 1, size=n)
    return [(source[i:i + q_len], source[i + q_len:i + q_len + a_len]) for i in starts]


# ----------------------------------------------------------------------------- verifier


class LogLikVerifier:
    """A frozen model's likelihood of s given d: exp(mean_t log p(s_t | <v>d</v> s_<t)), in (0, 1]."""

    def __init__(self, model: nnx.Module, width: int):
        self.model, self.width = model, width
        self._fn = nnx.jit(lambda m, t: teacher_forced_logprobs(m, t))

    def __call__(self, sources: Sequence[bytes], recons: Sequence[bytes]) -> np.ndarray:
        rows = [verifier_prompt(d) + s for s, d in zip(sources, recons)]
        toks, lens = encode_prompts(rows, width=self.width - 1)
        toks = np.concatenate([toks, np.full((len(rows), 1), PAD_ID, np.int32)], axis=1)
        toks[np.arange(len(rows)), lens] = EOS_ID  # s must also end where it ends
        lp = np.asarray(self._fn(self.model, jnp.asarray(toks)))
        out = []
        for i, (s, d) in enumerate(zip(sources, recons)):
            start = 1 + len(verifier_prompt(d))  # BOS + prompt, then s, then EOS
            sl = lp[i, start:start + len(s) + 1]  # s bytes and the closing EOS
            out.append(float(np.exp(sl.mean())))
        return np.array(out, np.float32)


# ----------------------------------------------------------------------------- episodes


class Episode(NamedTuple):
    """One batch of episodes. Rows of ``c`` are sources x G codes (groups contiguous); rows of
    ``d`` (D's or A's rollout) belong to C row ``d_owner[j]``."""

    c: Rollout
    d: Rollout
    d_owner: np.ndarray  # (rows of d,) int
    rewards: np.ndarray  # (rows of c,) float32
    scores: dict  # per C row: fidelity, ratio, gate, signal, used, banned, reward ((rows of c,) arrays)
    metrics: dict
    samples: list  # (source, code, reconstruction-or-answer) byte triples, one per C row


def _roll(policy, prompts: list[bytes], key, sample: SampleConfig, width: int, impl: str = "loop") -> Rollout:
    toks, lens = encode_prompts(prompts, width=width)
    if impl == "engine":
        from hqf_jax.rl.engine_rollout import engine_rollout

        return engine_rollout(policy, toks, lens, key, sample)
    return rollout(policy, toks, lens, key, sample)


def score(sources: Sequence[bytes], codes: Sequence[bytes], recons: Sequence[bytes], c_roll: Rollout,
          constraints: Sequence[Constraints], cfg: KolmogorovConfig, fid: np.ndarray | None = None) -> dict:
    """Per-code reward terms (numpy (N,) arrays): fidelity, ratio, gate, signal, used, banned, reward."""
    n = len(codes)
    if fid is None:
        fid = np.array([byte_fidelity(s, d, cfg.fidelity) for s, d in zip(sources, recons)], np.float32)
    ratio = np.array([len(c) / max(len(s), 1) for s, c in zip(sources, codes)], np.float32)
    var, ent, plen = np.asarray(c_roll.varentropy), np.asarray(c_roll.entropy), np.asarray(c_roll.prompt_lens)
    gate, sig, used, banned = (np.zeros(n, np.float32) for _ in range(4))
    for i in range(n):
        gate[i], sig[i] = code_gate(codes[i], constraints[i].inject, int(plen[i]), var[i], ent[i], cfg.gate)
        used[i], banned[i] = constraint_scores(codes[i], constraints[i])
    penalty = cfg.constraint_weight * ((1.0 - used) + banned)
    reward = gate * fid - cfg.lam * ratio - penalty
    return dict(fidelity=fid, ratio=ratio, gate=gate, signal=sig, used=used, banned=banned,
                reward=reward.astype(np.float32))


def _metrics(sc: dict, c_roll: Rollout, d_roll: Rollout) -> dict:
    m = {k: float(np.nanmean(v)) for k, v in sc.items() if not np.all(np.isnan(v))}  # no signal: no items
    m["reward_std"] = float(np.std(sc["reward"]))
    for name, roll in (("c", c_roll), ("d", d_roll)):
        mk = np.asarray(roll.mask)
        tot = max(mk.sum(), 1)
        m[f"{name}_entropy"] = float((np.asarray(roll.entropy) * mk).sum() / tot)
        m[f"{name}_varentropy"] = float((np.asarray(roll.varentropy) * mk).sum() / tot)
        m[f"{name}_len"] = float(mk.sum(1).mean())
    m["c_stopped"] = float(np.asarray(c_roll.stopped).mean())
    return m


def run_episode(policy: nnx.Module, sources: Sequence[bytes], key: jax.Array, cfg: KolmogorovConfig, *,
                constraints: Sequence[Constraints] | None = None, memories: Sequence[bytes] | None = None,
                questions: Sequence[Sequence[tuple[bytes, bytes]]] | None = None,
                verifier=None) -> Episode:
    """C on each source (G codes each), then D (or, for cqav, A on each question) and V.

    sources: for 'ccv' pass past codes (see :func:`ccv_sources`); constraints / memories: one per
    source; questions: for 'cqav', n_questions (q, a) pairs per source (see :func:`make_questions`).
    """
    g = cfg.group_size
    ns = len(sources)
    constraints = list(constraints) if constraints is not None else [Constraints()] * ns
    memories = list(memories) if memories is not None else [b""] * ns
    if len(constraints) != ns or len(memories) != ns:
        raise KolmogorovConfigError("pass one constraints entry and one memory per source")
    rep = lambda xs: [x for x in xs for _ in range(g)]  # noqa: E731
    src_r, cons_r = rep(sources), rep(constraints)
    kc, kd = jax.random.split(key)
    c_roll = _roll(policy, [compressor_prompt(s, c, m) for s, c, m in zip(src_r, cons_r, rep(memories))],
                   kc, cfg.c_sample, cfg.prompt_width, cfg.rollout_impl)
    codes = completion_bytes(c_roll)
    if cfg.pattern == "cqav":
        if questions is None:
            raise KolmogorovConfigError("pattern 'cqav' needs questions: make_questions(rng, s, cfg.n_questions)")
        qs = rep(questions)
        prompts, owner, truth = [], [], []
        for i, (c, qa) in enumerate(zip(codes, qs)):
            for q, a in qa:
                prompts.append(answer_prompt(c, q))
                owner.append(i)
                truth.append(a)
        d_roll = _roll(policy, prompts, kd, cfg.d_sample, cfg.prompt_width, cfg.rollout_impl)
        answers = completion_bytes(d_roll)
        owner = np.array(owner)
        qf = np.array([byte_fidelity(a, b, "edit" if cfg.fidelity in ("loglik", "gain") else cfg.fidelity)
                       for a, b in zip(truth, answers)], np.float32)
        fid = np.array([qf[owner == i].mean() for i in range(len(codes))], np.float32)
        sc = score(src_r, codes, [b"" for _ in codes], c_roll, cons_r, cfg, fid=fid)
        samples = [(s, c, answers[int(np.argmax(owner == i))]) for i, (s, c) in enumerate(zip(src_r, codes))]
    else:
        d_roll = _roll(policy, [decompressor_prompt(c) for c in codes], kd, cfg.d_sample, cfg.prompt_width,
                       cfg.rollout_impl)
        recons = completion_bytes(d_roll)
        owner = np.arange(len(codes))
        fid = None
        if cfg.fidelity in ("loglik", "gain"):
            if verifier is None:
                raise KolmogorovConfigError(f"fidelity {cfg.fidelity!r} needs a verifier: LogLikVerifier or "
                                            "verifier.GainVerifier(frozen_model, width)")
            fid = verifier(src_r, recons)
        sc = score(src_r, codes, recons, c_roll, cons_r, cfg, fid=fid)
        samples = list(zip(src_r, codes, recons))
    return Episode(c_roll, d_roll, owner, sc["reward"], sc, _metrics(sc, c_roll, d_roll), samples)


def ccv_sources(history: HistoryBuffer, n: int) -> list[bytes]:
    """C->C->V: n past codes to re-compress (the verifier then compares D's output with them)."""
    return [e.code for e in history.sample(n)]


def best_codes(ep: Episode, group_size: int) -> list[bytes]:
    """The highest-reward code of each group."""
    r = ep.rewards.reshape(-1, group_size)
    return [ep.samples[i * group_size + int(j)][1] for i, j in enumerate(r.argmax(1))]


def update_memories(policy: nnx.Module, memories: Sequence[bytes], codes: Sequence[bytes], key: jax.Array,
                    cfg: KolmogorovConfig) -> list[bytes]:
    """(C->D->V)->CC: the next memory of each stream is C's (greedy) code of memory + best code,
    cut to memory_budget bytes."""
    sample = SampleConfig(max_new_tokens=cfg.memory_budget, top_k=1)
    roll = _roll(policy, [compressor_prompt(m + c) for m, c in zip(memories, codes)], key, sample,
                 cfg.prompt_width, cfg.rollout_impl)
    return [b[: cfg.memory_budget] for b in completion_bytes(roll)]
