"""The Kolmogorov compressor at GPU scale (issue 17), in ONE process:

    python -m studies.kolmogorov_gpu --out runs/kolmogorov_gpu [--size gpu|tiny] [--total-s 520]
        [--pretrain-s S --pretrain-steps N] [--warm-s S --warm-steps N] [--grpo-s S --grpo-steps N]
        [--arms cdv,cdv_nogate,ccv,cdv_cc,cqav] [--eval-sources N --eval-samples K] [key=value ...]

1. pretrain a byte LM (--size gpu: configs/lm_125m.py, 128M parameters, bf16) on data.source (GPU: the Python
   sources at /tmp/pysrc through the byte store) for a time/step budget; valid bpb;
2. warm start (hqf_jax/rl/warmstart.py): codec pairs (s -> code, code -> s) in the C and D prompts; round trip;
3. GRPO from the warm-started policy, one arm per pattern (each from the same warm-started parameters): gate,
   injection over the byte vocabulary and bans on; ``cdv_nogate`` is cdv with the gate off (the hack it stops:
   injected items used verbatim, measured as items present with near-zero varentropy); ``cdv_cc`` trains the
   memory rewrite in the gradient; rollouts through the generation engine;
4. held-out sources compressed by each policy (bits per byte at chrF >= 0.5/0.7/0.9, raw fallback) beside zlib -9,
   lzma 9e and the arithmetic-coding bound of the pretrained LM and of each policy; the frozen pretrained LM's
   gain score (hqf_jax/rl/verifier.py) of the best reconstruction beside chrF.

Writes <out>/table.md, results.json and (when matplotlib is there) curves.png. Budgets: pretrain and warm start stop
at their steps or their seconds (counted after their first, compiling step), whichever first. The GRPO arms: their
configs are checked before any training, with one rl.prompt_width raised to the longest prompt any arm can build;
then every arm takes its first (compiling: rollouts, engine, train step) step, off the arms' clocks; then each arm
trains for min(--grpo-s, its share of what is left of --total-s after keeping --eval-reserve-s per arm) and is
scored (table: steps, training seconds and first-step seconds per arm). An arm that raises is recorded with its
error and the next one goes on; the table is always written. key=value overrides apply to the GRPO config (model,
data, rl, grpo, train.lr).
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax import cli
from hqf_jax.report import write_report
from hqf_jax.rl import compress_score as cs
from hqf_jax.rl import kolmogorov as kg
from hqf_jax.rl.grpo_task import GRPODriver, kolmogorov_config
from hqf_jax.rl.kolmogorov_report import plot, table
from hqf_jax.rl.verifier import GainVerifier
from hqf_jax.rl.warmstart import build_warmstart_task, roundtrip
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import make_train_step
from hqf_jax.trainer.optim import make_optimizer

ARMS = {  # name -> rl overrides on top of the GRPO config, in the order they run (the last ones may not fit)
    "warm": {},  # no GRPO step: the warm-started policy scored like the arms (what GRPO adds is measured against it)
    "cdv": {},
    "cdv_nogate": {"gate_kind": "none"},
    "cdv_cc": {"pattern": "cdv_cc", "cc_in_gradient": True},
    "ccv": {"pattern": "ccv"},
    "cqav": {"pattern": "cqav"},
}
GPU = dict(model=dict(d_model=768, num_layers=12, num_heads=6, qk_dim=768, v_dim=1536, ffn_dim=2560,
                      compute_dtype="bfloat16", chunk_size=64),
           data=dict(source="files", paths="/tmp/pysrc", seq_len=512, batch_size=64),
           pretrain=dict(lr=1e-3, warmup_steps=100), warm=dict(lr=3e-4, warmup_steps=20),
           grpo=dict(lr=1e-5, warmup_steps=5))
TINY = dict(model=dict(d_model=32, num_layers=1, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=16),
            data=dict(source="stdlib", max_files=60, seq_len=64, batch_size=4),
            pretrain=dict(lr=3e-3, warmup_steps=2), warm=dict(lr=3e-3, warmup_steps=2),
            grpo=dict(lr=1e-4, warmup_steps=1),
            rl=dict(source_len=24, code_budget=24, recon_budget=28, prompt_width=56, sources_per_step=2,
                    group_size=2, memory_budget=6),
            warm_section=dict(sources_per_step=4, eval_sources=2))


def base_config(size: str, overrides: list[str]):
    c = cli.load_config_file("configs/kolmogorov_grpo.py")
    p = GPU if size == "gpu" else TINY
    c.model.update(p["model"])
    c.data.update(p["data"])
    c.rl.update(p.get("rl", {}))
    c.warm.update(p.get("warm_section", {}))
    c.rl.init_from = ""
    return cli.apply_overrides(c, overrides), p


class Clock:
    def __init__(self, total_s: float):
        self.t0, self.total = time.perf_counter(), total_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.total - self.elapsed()


_STEPS: dict = {}  # cache_key -> jitted step: the GRPO arms share one compiled train step


class Fit:
    """Train ``model`` in place with the shared trainer's step, in pieces: ``advance`` runs steps until a step count,
    a number of seconds (of this call) or an absolute ``deadline`` (perf_counter), so the first (compiling) step can
    run before a clock starts; ``finish`` writes the parameters back into the model."""

    def __init__(self, loss_fn, model, batch_fn, train_cfg, log: list, tag: str, every: int = 10, after_step=None,
                 cache_key=None):
        self.model, self.batch_fn, self.log, self.tag, self.every, self.after = model, batch_fn, log, tag, every, after_step
        graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        tx, schedule = make_optimizer(train_cfg)
        self.step_fn = _STEPS.get(cache_key) if cache_key is not None else None
        if self.step_fn is None:
            self.step_fn = jax.jit(make_train_step(loss_fn, graphdef, tx, schedule, train_cfg.seed), donate_argnums=(0,))
            if cache_key is not None:
                _STEPS[cache_key] = self.step_fn
        self.state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
        self.step, self.t0 = 0, time.perf_counter()

    def advance(self, max_steps: int, seconds: float = float("inf"), deadline: float = float("inf")) -> float:
        """Steps until ``max_steps`` in all, ``seconds`` or ``deadline``; returns this call's seconds (synced)."""
        t = time.perf_counter()
        while self.step < max_steps and time.perf_counter() - t < seconds and time.perf_counter() < deadline:
            self.state, m = self.step_fn(self.state, self.rest, jax.tree.map(jnp.asarray, self.batch_fn(self.step)))
            self.step += 1
            if self.after is not None:
                self.after(self.step, self.state["params"])
            if self.step % self.every == 0 or self.step == max_steps:
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                el = time.perf_counter() - self.t0
                self.log.append({"phase": self.tag, "step": self.step, "s": el, **m})
                print(f"[{self.tag}] step {self.step} {el:.0f}s " + " ".join(
                    f"{k}={v:.4f}" for k, v in m.items()
                    if k in ("loss", "bpb", "completion_bpb", "kl", "clip_frac", "ratio_mean")), flush=True)
        jax.block_until_ready(self.state["params"])
        return time.perf_counter() - t

    def finish(self):
        nnx.update(self.model, self.state["params"])


def fit(loss_fn, model, batch_fn, train_cfg, seconds: float, max_steps: int, log: list, tag: str, every: int = 10,
        after_step=None, deadline: float = float("inf"), cache_key=None):
    """Train ``model`` in place until ``max_steps``, or ``seconds`` counted after the first (compiling) step, or
    the absolute ``deadline``; returns (steps, seconds in all)."""
    f = Fit(loss_fn, model, batch_fn, train_cfg, log, tag, every, after_step, cache_key)
    first = f.advance(min(1, max_steps))
    rest = f.advance(max_steps, seconds, deadline)
    f.finish()
    return f.step, first + rest


def copy_model(model):
    g, s = nnx.split(model)
    return nnx.merge(g, jax.tree.map(jnp.copy, s))


def hack_measure(ep) -> dict:
    """Verbatim use of injected items: of the codes with items, the fraction containing all of them, and the
    fraction of present items emitted with varentropy < 0.1 nats^2 (a near-deterministic copy)."""
    sc = ep.scores
    sig = sc["signal"][~np.isnan(sc["signal"])]
    return {"used": float(np.mean(sc["used"])), "gate": float(np.mean(sc["gate"])),
            "signal": float(np.mean(sig)) if sig.size else None,
            "copied_frac": float(np.mean(sig < 0.1)) if sig.size else None}


def arm_configs(gcfg, arms: list[str]) -> dict:
    """Each arm's GRPO config, with one rl.prompt_width for all: the configured one raised to the longest prompt
    any of the arms can build (kolmogorov.prompt_tokens_needed), so no arm meets a RolloutError mid-run; every
    config is checked here, before any training (a bad key raises ConfigError now)."""
    over = {name: [f"rl.{k}={v}" for k, v in ARMS[name].items()] for name in arms}
    need = [kg.prompt_tokens_needed(kolmogorov_config(cli.apply_overrides(gcfg, over[name] + ["rl.prompt_width=100000"]).rl),
                                    int(gcfg.rl.source_len)) for name in arms]
    width = max([int(gcfg.rl.prompt_width)] + need)
    if width != gcfg.rl.prompt_width:
        print(f"[kolmogorov_gpu] rl.prompt_width {gcfg.rl.prompt_width} -> {width}: the longest prompt of "
              f"{dict(zip(arms, need))}", flush=True)
    out = {name: cli.apply_overrides(gcfg, over[name] + [f"rl.prompt_width={width}"]) for name in arms}
    for c in out.values():
        kolmogorov_config(c.rl)  # raises ConfigError (naming the key) if anything else is off
    return out


class Arm:
    """One GRPO arm: its driver and training run; ``start`` takes the first (compiling) step before the clocks."""

    def __init__(self, name, acfg, warm_model, workdir, every):
        self.name, self.cfg = name, acfg
        self.model = copy_model(warm_model)
        self.drv = GRPODriver(acfg, self.model, workdir / name)
        self.curve: list = []
        self.log: list = []  # the loss's kl, clip_frac and ratio_mean every 10 steps (bf16 rollout vs training form)

        def after(step, params):
            self.drv.params, self.drv.params_step = params, step
            self.curve.append({"step": step, **{k[3:]: v for k, v in self.drv.metrics.items() if k.startswith("rl/")}})

        self.fit = Fit(self.drv.loss_fn, self.model, self.drv.batch_fn, acfg.train, self.log, f"grpo:{name}",
                       every=every, after_step=after, cache_key=("grpo", self.drv.gcfg))
        self.trains = name != "warm"
        self.first_s = self.fit.advance(1) if self.trains else 0.0  # rollout, engine and train-step compiles

    def train_and_score(self, seconds, max_steps, verifier, eval_sources, args, deadline) -> dict:
        secs = self.fit.advance(max_steps if self.trains else 0, seconds, deadline)
        self.fit.finish()
        drv = self.drv
        policy = drv.policy()
        relaxed, drv.schedule.n = drv.schedule.n, drv.schedule.n_start  # items at the configured level, whatever
        ev = drv._episode(policy, 2**31 - 1, sources=list(drv.eval_sources), update_state=False)  # the schedule did
        drv.schedule.n = relaxed
        comp = cs.policy_bpb(policy, eval_sources, drv.kcfg, args.eval_samples, jax.random.PRNGKey(5),
                             verifier=verifier)
        ac = cs.ac_bound_bytes(policy, eval_sources)
        return {"steps": self.fit.step, "seconds": secs, "first_step_s": self.first_s, "curve": self.curve,
                "loss_log": self.log, "eval_episode": ev.metrics, "hack": hack_measure(ev), "heldout": comp,
                "ac_bound_bpb": float(8 * ac.sum() / sum(len(s) for s in eval_sources))}


def run_arms(arms, acfgs, model, verifier, eval_sources, args, work, clock, results) -> None:
    """Every arm's first step first (all compiles, off the arms' clocks), then each arm trains for min(--grpo-s, its
    share of what is left of --total-s less --eval-reserve-s per arm) and is scored. An arm that raises is recorded
    with its error and the next one goes on."""
    def fail(name, e):
        traceback.print_exc()
        results["arms"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(f"[{name}] failed: {results['arms'][name]['error']}", flush=True)

    started = {}
    for i, name in enumerate(arms):
        if clock.left() < args.eval_reserve_s * (len(arms) - i):
            results["arms"][name] = {"skipped": f"{clock.left():.0f} s left of --total-s before its first step"}
            continue
        try:
            started[name] = Arm(name, acfgs[name], model, work, 1 if args.size == "tiny" else 10)
            print(f"[{name}] first step (compiles) {started[name].first_s:.0f}s at {clock.elapsed():.0f}s", flush=True)
        except Exception as e:  # noqa: BLE001 -- one arm's failure must not lose the others
            fail(name, e)
    todo = [n for n in arms if n in started]
    for i, name in enumerate(todo):
        arm = started.pop(name)
        if clock.left() < args.eval_reserve_s / 2:
            results["arms"][name] = {"skipped": f"{clock.left():.0f} s left of --total-s after its first step"}
            continue
        share = max(0.0, (clock.left() - args.eval_reserve_s * (len(todo) - i)) / (len(todo) - i))
        try:
            a = arm.train_and_score(min(args.grpo_s, share), args.grpo_steps, verifier, eval_sources, args,
                                    time.perf_counter() + share)
            results["arms"][name] = a
            print(f"[{name}] {a['steps']} steps in {a['seconds']:.0f}s (+{a['first_step_s']:.0f}s first step), eval "
                  f"{a['eval_episode'].get('reward', float('nan')):.3f}, held-out bpb@0.9 {a['heldout']['bpb@0.9']:.3f}"
                  f" at {clock.elapsed():.0f}s", flush=True)
        except Exception as e:  # noqa: BLE001
            fail(name, e)
        del arm


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", choices=("gpu", "tiny"), default="gpu")
    ap.add_argument("--total-s", type=float, default=520.0)
    ap.add_argument("--pretrain-s", type=float, default=60.0)
    ap.add_argument("--pretrain-steps", type=int, default=100000)
    ap.add_argument("--warm-s", type=float, default=45.0)
    ap.add_argument("--warm-steps", type=int, default=100000)
    ap.add_argument("--grpo-s", type=float, default=45.0)
    ap.add_argument("--grpo-steps", type=int, default=100000)
    ap.add_argument("--arms", default=",".join(ARMS), help="'warm' scores the warm-started policy without GRPO")
    ap.add_argument("--eval-sources", type=int, default=32)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--eval-reserve-s", type=float, default=15.0, help="seconds kept per arm for its evaluation")
    args, overrides = ap.parse_known_args(argv)
    clock = Clock(args.total_s)
    cfg, preset = base_config(args.size, overrides)
    out = Path(args.out)
    work = out / "work"
    arms = [a for a in args.arms.split(",") if a]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise SystemExit(f"unknown arms {bad}: use {sorted(ARMS)}")
    gcfg = cli.apply_overrides(cfg, [f"train.{k}={v}" for k, v in preset["grpo"].items()] +
                               [f"train.steps={args.grpo_steps}"])
    acfgs = arm_configs(gcfg, arms)  # every arm's config checked (and its prompt width set) before any training

    # 1. pretrain
    pcfg = cli.apply_overrides(cfg, [f"train.{k}={v}" for k, v in preset["pretrain"].items()] +
                               [f"train.steps={args.pretrain_steps}", "train.min_lr_ratio=1.0", "train.weight_decay=0.1",
                                "train.eval_max_bytes=262144"])
    task, corpus = lm_task.build_task(pcfg)
    model = task.model
    log: list = []
    steps, secs = fit(task.loss_fn, model, task.batch_fn, pcfg.train, args.pretrain_s, args.pretrain_steps, log,
                      "pretrain", every=50 if args.size == "gpu" else 1)
    pre = {"steps": steps, "seconds": secs, **task.eval_fn(model)}
    print(f"[pretrain] {steps} steps, valid bpb {pre['valid_bpb']:.3f}, at {clock.elapsed():.0f}s", flush=True)
    frozen = copy_model(model)  # V's frozen byte LM

    # 2. warm start
    wcfg = cli.apply_overrides(cfg, [f"train.{k}={v}" for k, v in preset["warm"].items()] +
                               [f"train.steps={args.warm_steps}", "train.min_lr_ratio=1.0"])
    wtask, codec = build_warmstart_task(wcfg, model)
    held = corpus.stream("valid")
    rng = np.random.default_rng([cfg.train.seed, 99])
    n = cfg.rl.source_len
    eval_sources = [held[s:s + n].tobytes() for s in rng.integers(0, len(held) - n, args.eval_sources)]
    rt = lambda m: roundtrip(m, eval_sources[:16], codec, cfg.rl.code_budget, cfg.rl.recon_budget,  # noqa: E731
                             cfg.rl.prompt_width)
    before = rt(model)
    wsteps, wsecs = fit(wtask.loss_fn, model, wtask.batch_fn, wcfg.train, args.warm_s, args.warm_steps, log, "warm",
                        every=20 if args.size == "gpu" else 1)
    warm = {"steps": wsteps, "seconds": wsecs, "before": before, "after": rt(model), "codec": codec.to_json()}
    print(f"[warm] {wsteps} steps, round trip {warm['after']} at {clock.elapsed():.0f}s", flush=True)

    # 3-4. GRPO arms and held-out compression
    results = {"params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
               "data": f"{cfg.data.source} {cfg.data.get('paths', '')}".strip(), "device": str(jax.devices()[0]),
               "pretrain": pre, "warm": warm, "eval_sources": len(eval_sources), "source_len": n,
               "baselines_bpb": cs.baselines_bpb(eval_sources),
               "pretrained_ac_bpb": float(8 * cs.ac_bound_bytes(frozen, eval_sources).sum() / (n * len(eval_sources))),
               "budgets": vars(args), "overrides": overrides, "arms": {}, "log": log,
               "prompt_width": int(next(iter(acfgs.values())).rl.prompt_width) if acfgs else None}
    width = max([int(c.rl.prompt_width) for c in acfgs.values()] + [int(cfg.rl.prompt_width)])
    verifier = GainVerifier(frozen, width + cfg.rl.recon_budget + 8)  # one instance: one compile
    try:
        run_arms(arms, acfgs, model, verifier, eval_sources, args, work, clock, results)
    finally:  # the table is written whatever happened to the arms
        results["wall_s"] = clock.elapsed()
        text = table(results)
        write_report(out, text, results)
        png = plot(results, out)
    print(text)
    print(f"\n[kolmogorov_gpu] {out / 'table.md'}, {out / 'results.json'}" + (f", {png}" if png else ""))
    return results


if __name__ == "__main__":
    main()
