"""GRPO for the Kolmogorov compressor as a ``Task`` of the shared training loop (hqf_jax.trainer).

The loop owns the optimizer, the jitted step, checkpoints and logging; this module supplies:

* ``batch_fn(step)``: runs one batch of episodes (C -> D -> V, or another pattern) with the *current*
  policy and returns the rows to train on: C's rollouts (and D's / A's, sharing C's advantages when
  ``rl.train_d``), padded to one width, with their sampling-time log-probs, the frozen reference's
  log-probs (when beta != 0), group-normalised advantages and DAPO's keep-weights.
* ``loss_fn``: a teacher-forced pass of the policy over those rows and the GRPO loss.
* an intervention hook that hands the updated parameters back to ``batch_fn``, logs the episode
  metrics (reward mean/std, fidelity, compression ratio, gate, entropy, varentropy, ...) and saves the
  host-side state (history buffer, relaxation schedule, memories) beside each checkpoint.

Resume: when the loop restores step s, ``batch_fn(s)`` sees that it holds no parameters for s and
restores them (and the host state saved at s) from the run folder itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.errors import CheckpointError, ConfigError
from hqf_jax.ops.constants import PAD_ID
from hqf_jax.rl import kolmogorov as kg
from hqf_jax.rl.gate import GateConfig
from hqf_jax.rl.grpo import GRPOConfig, advantages_for, grpo_config, grpo_loss, sequence_weights
from hqf_jax.rl.history import HistoryBuffer, RelaxationSchedule
from hqf_jax.rl.rollout import teacher_forced_logprobs
from hqf_jax.rl.sources import make_source
from hqf_jax.trainer.loop import Task

HOST_STATE_DIR = "rl_state"


def kolmogorov_config(rl) -> kg.KolmogorovConfig:
    gate = GateConfig(signal=rl.gate_signal, kind=rl.gate_kind, tau=rl.gate_tau, threshold=rl.gate_threshold,
                      positions=rl.gate_positions)
    try:
        kcfg = kg.KolmogorovConfig(
            pattern=rl.pattern, group_size=rl.group_size, lam=rl.lam, fidelity=rl.fidelity,
            code_budget=rl.code_budget, recon_budget=rl.recon_budget, prompt_width=rl.prompt_width,
            c_temperature=rl.c_temperature, c_top_p=rl.c_top_p, d_temperature=rl.d_temperature,
            d_greedy=rl.d_greedy, n_inject=rl.n_inject, n_ban=rl.n_ban, ban_len=rl.ban_len,
            constraint_weight=rl.constraint_weight, gate=gate, memory_budget=rl.memory_budget,
            n_questions=rl.n_questions, question_len=rl.question_len, answer_len=rl.answer_len,
            inject_vocab=kg.INJECT_VOCABS[rl.get("inject_vocab", "az")], rollout_impl=rl.get("rollout_impl", "loop"))
        kg.check_prompt_width(kcfg, int(rl.source_len))  # at load time, not as a RolloutError mid-run
        return kcfg
    except KeyError:
        raise ConfigError(f"rl.inject_vocab={rl.inject_vocab!r}: use one of {sorted(kg.INJECT_VOCABS)}") from None
    except ValueError as e:
        raise ConfigError(f"rl: {e}") from None


def loss_config(cfg) -> GRPOConfig:
    over = {k: v for k, v in cfg.grpo.items() if k != "variant" and v is not None}
    over.setdefault("max_len", max(cfg.rl.code_budget, cfg.rl.recon_budget))
    try:
        return grpo_config(cfg.grpo.variant, group_size=cfg.rl.group_size, **over)
    except ValueError as e:
        raise ConfigError(f"grpo: {e}") from None


@nnx.jit
def _ref_logprobs(model, tokens):
    return teacher_forced_logprobs(model, tokens)


def _pad(x: np.ndarray, width: int, value) -> np.ndarray:
    out = np.full((x.shape[0], width), value, x.dtype)
    out[:, :x.shape[1]] = x
    return out


class GRPODriver:
    """Host side of a GRPO run: the current parameters, the episodes, and the run's host state."""

    def __init__(self, cfg, model: nnx.Module, workdir: str | Path):
        self.cfg, self.rl = cfg, cfg.rl
        self.kcfg = kolmogorov_config(cfg.rl)
        self.gcfg = loss_config(cfg)
        self.workdir = Path(workdir)
        self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
        self.params_step = 0
        self.ref = None
        self.verifier = None
        if self.kcfg.fidelity in ("loglik", "gain"):  # V: a frozen copy of the initial policy
            from hqf_jax.rl.verifier import GainVerifier

            frozen = nnx.merge(self.graphdef, jax.tree.map(jnp.copy, self.params), self.rest)
            width = self.kcfg.prompt_width + self.kcfg.recon_budget + 8
            self.verifier = (GainVerifier if self.kcfg.fidelity == "gain" else kg.LogLikVerifier)(frozen, width)
        self.mem_ep: kg.Episode | None = None  # cdv_cc with rl.cc_in_gradient: the memory rewrite's episode
        if self.gcfg.beta != 0.0:  # the frozen reference: a copy of the initial policy
            self.ref = nnx.merge(self.graphdef, jax.tree.map(jnp.copy, self.params), self.rest)
        self.source = make_source(cfg.rl, cfg.get("data"), "train")
        eval_source = make_source(cfg.rl, cfg.get("data"), "valid" if cfg.rl.source == "corpus" else "train")
        self.eval_sources = eval_source(np.random.default_rng([cfg.train.seed, 2**31 - 1]), cfg.rl.sources_per_step)
        n_relax = max(cfg.rl.n_inject, cfg.rl.n_ban)
        self.schedule = RelaxationSchedule(n_start=n_relax, patience=cfg.rl.relax_patience,
                                           min_delta=cfg.rl.relax_min_delta)
        self.history = HistoryBuffer(cfg.rl.history_capacity, cfg.rl.history_min_fidelity, cfg.train.seed)
        self.memories = [b""] * cfg.rl.sources_per_step
        self.cache: tuple[int, dict] | None = None
        self.metrics: dict[str, float] = {}
        self.samples: list = []
        self.reward_history: list[tuple[int, float]] = []  # (step, mean reward) of every training episode

    # --------------------------------------------------------------- parameters and host state

    def policy(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.rest)

    def _restore(self, step: int) -> None:
        from hqf_jax.trainer.checkpoint import Checkpointer, abstract_like
        from hqf_jax.trainer.optim import make_optimizer

        tx, _ = make_optimizer(self.cfg.train)
        abstract = abstract_like({"step": jnp.zeros((), jnp.int32), "params": self.params,
                                  "opt_state": jax.eval_shape(tx.init, self.params)})
        ckpt = Checkpointer(self.workdir, async_save=False)
        try:
            if step not in ckpt.all_steps():
                raise CheckpointError(f"GRPO resumes at step {step} but {ckpt.dir} has no checkpoint {step}; "
                                      "use a new --workdir")
            self.params = ckpt.restore(step, abstract)["params"]
        finally:
            ckpt.close()
        self.params_step = step
        path = self.workdir / HOST_STATE_DIR / f"{step}.json"
        if path.exists():
            self.load_host_state(json.loads(path.read_text()))
        else:
            print(f"[grpo] no host state at {path}: history, relaxation and memories start afresh")

    def host_state(self) -> dict:
        return {"history": self.history.to_json(), "schedule": self.schedule.to_json(),
                "memories": [m.hex() for m in self.memories]}

    def load_host_state(self, d: dict) -> None:
        self.history = HistoryBuffer.from_json(d["history"])
        self.schedule = RelaxationSchedule.from_json(d["schedule"])
        self.memories = [bytes.fromhex(m) for m in d["memories"]]

    # --------------------------------------------------------------- episodes -> training rows

    def _episode(self, model: nnx.Module, step: int, sources: list[bytes] | None = None,
                 update_state: bool = True) -> kg.Episode:
        rl, kcfg = self.rl, self.kcfg
        rng = np.random.default_rng([self.cfg.train.seed, step])
        key = jax.random.fold_in(jax.random.PRNGKey(self.cfg.train.seed + 1), step)
        n = rl.sources_per_step
        if sources is None:
            if kcfg.pattern == "ccv" and len(self.history) and rng.random() < rl.ccv_fraction:
                sources = kg.ccv_sources(self.history, n)
            else:
                sources = self.source(rng, n)
        k = self.schedule.n
        cons = [kg.sample_constraints(rng, s, min(k, kcfg.n_inject), min(k, kcfg.n_ban), kcfg.inject_vocab,
                                      kcfg.ban_len) for s in sources]
        questions = None
        if kcfg.pattern == "cqav":
            questions = [kg.make_questions(rng, s, kcfg.n_questions, kcfg.question_len, kcfg.answer_len)
                         for s in sources]
        memories = self.memories if kcfg.pattern == "cdv_cc" else None
        ep = kg.run_episode(model, sources, key, kcfg, constraints=cons, memories=memories, questions=questions,
                            verifier=self.verifier)
        self._last_ep = ep
        if update_state:
            for (s, c, _), f in zip(ep.samples, ep.scores["fidelity"]):
                self.history.add(s, c, float(f), step)
            self.schedule.update(float(ep.rewards.mean()))
            if kcfg.pattern == "cdv_cc" and self.rl.get("cc_in_gradient", False):
                from hqf_jax.rl.memory import memory_episode

                self.mem_ep, self.memories = memory_episode(model, self.memories, kg.best_codes(ep, kcfg.group_size),
                                                            jax.random.fold_in(key, 7), kcfg)
            elif kcfg.pattern == "cdv_cc":
                self.memories = kg.update_memories(model, self.memories, kg.best_codes(ep, kcfg.group_size),
                                                   jax.random.fold_in(key, 7), kcfg)
        return ep

    def _parts(self, ep: kg.Episode) -> list:
        g = self.gcfg
        rewards = jnp.asarray(ep.rewards)
        adv = np.asarray(advantages_for(rewards, g))
        w = sequence_weights(rewards, g)
        w = np.ones_like(adv) if w is None else np.asarray(w)
        parts = [(ep.c, adv, w)]
        if self.rl.train_d:
            parts.append((ep.d, adv[ep.d_owner], w[ep.d_owner]))
        return parts

    def _rows(self, ep: kg.Episode, mem_ep: kg.Episode | None = None) -> dict[str, np.ndarray]:
        parts = self._parts(ep) + (self._parts(mem_ep) if mem_ep is not None else [])
        width = max(p[0].tokens.shape[1] for p in parts)
        rows = {
            "tokens": np.concatenate([_pad(np.asarray(r.tokens), width, PAD_ID) for r, _, _ in parts]),
            "old_logp": np.concatenate([_pad(np.asarray(r.logprobs), width, 0.0) for r, _, _ in parts]),
            "mask": np.concatenate([_pad(np.asarray(r.mask), width, False) for r, _, _ in parts]),
            "adv": np.concatenate([a for _, a, _ in parts]).astype(np.float32),
            "weights": np.concatenate([x for _, _, x in parts]).astype(np.float32),
        }
        if self.ref is not None:
            rows["ref_logp"] = np.asarray(_ref_logprobs(self.ref, jnp.asarray(rows["tokens"])))
        else:
            rows["ref_logp"] = np.zeros_like(rows["old_logp"])
        return rows

    def batch_fn(self, step: int) -> dict[str, np.ndarray]:
        if self.params_step != step:
            self._restore(step)
        k = max(int(self.rl.updates_per_rollout), 1)
        if self.cache is not None and self.cache[0] == step - step % k:
            return self.cache[1]
        self.mem_ep = None
        ep = self._episode(self.policy(), step)
        rows = self._rows(ep, self.mem_ep)
        self.metrics = {f"rl/{name}": v for name, v in ep.metrics.items()}
        if self.mem_ep is not None:
            self.metrics.update({f"rl/mem_{k}": self.mem_ep.metrics[k] for k in ("reward", "fidelity", "ratio")})
        self.metrics["rl/relax_n"] = float(self.schedule.n)
        self.metrics["rl/kept_frac"] = float(rows["weights"].mean())
        self.samples = [(s, c, d, float(r)) for (s, c, d), r in zip(ep.samples, ep.rewards)]
        self.reward_history.append((step, float(ep.rewards.mean())))
        self.cache = (step, rows)
        return rows

    # --------------------------------------------------------------- loop callbacks

    def loss_fn(self, model, batch, rng):
        del rng
        logp = teacher_forced_logprobs(model, batch["tokens"])
        loss, metrics = grpo_loss(logp, batch["old_logp"], batch["ref_logp"], batch["mask"], batch["adv"],
                                  self.gcfg, batch["weights"])
        metrics.pop("loss")
        return loss, metrics

    def hook(self, step, state, writer, last):
        self.params, self.params_step = state["params"], step
        train = self.cfg.train
        if step % train.log_every == 0 or step == train.steps:
            writer.scalars(step, self.metrics)
            last.update(self.metrics)
        if step % train.ckpt_every == 0 or step == train.steps:
            d = self.workdir / HOST_STATE_DIR
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{step}.json").write_text(json.dumps(self.host_state()))
        return None

    def eval_fn(self, model) -> dict[str, float]:
        """Fixed held-out sources (the same every eval), a fixed key: reward, fidelity, ratio."""
        ep = self._episode(model, 2**31 - 1, sources=list(self.eval_sources), update_state=False)
        return {f"eval_{k}": ep.metrics[k] for k in ("reward", "fidelity", "ratio", "gate", "c_len")}

    def sample_fn(self, model, step) -> str:
        del model
        lines = [f"s={s!r} | c={c!r} | d={d!r} | r={r:.3f}" for s, c, d, r in self.samples[: self.rl.samples_to_log]]
        return "\n".join(lines)


def build_grpo_task(cfg, workdir: str | Path, model: nnx.Module | None = None) -> tuple[Task, GRPODriver]:
    """The Task for train(...) and its driver. ``model``: the policy (default: a RetNetLM from
    cfg.model, or the newest checkpoint of the LM run ``rl.init_from``)."""
    if model is None:
        from hqf_jax.trainer import lm_task

        if cfg.rl.init_from:
            model, _, step = lm_task.load_run(cfg.rl.init_from)
            print(f"[grpo] policy initialised from {cfg.rl.init_from} step {step}")
        else:
            model = lm_task.build_model(cfg)
    driver = GRPODriver(cfg, model, workdir)
    rows = cfg.rl.sources_per_step * cfg.rl.group_size
    task = Task(model=model, loss_fn=driver.loss_fn, batch_fn=driver.batch_fn, eval_fn=driver.eval_fn,
                sample_fn=driver.sample_fn, units_per_step=rows, unit_name="episodes",
                interventions=[driver.hook])
    return task, driver
