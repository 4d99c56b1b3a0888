"""GRPO on the Kolmogorov compressor:  python -m train.grpo [--config configs/grpo.py] [--workdir DIR] [key=value ...]

Re-running the same command resumes from the newest checkpoint of the run folder (parameters,
optimizer, and the host state: history buffer, relaxation schedule, memories).

With ``mode=warmstart`` (configs/kolmogorov_warm.py) it runs the supervised warm start instead: (s -> code,
code -> s) pairs of a simple codec in the C and D prompts (hqf_jax/rl/warmstart.py), starting from
``rl.init_from`` (a pretrained LM run) or from scratch; its run folder is then a GRPO run's ``rl.init_from``.
"""

import json
from pathlib import Path

from hqf_jax import cli
from hqf_jax.rl.grpo_task import build_grpo_task
from hqf_jax.trainer.distributed import maybe_initialize
from hqf_jax.trainer.loop import train
from hqf_jax.trainer.signals import finish


def warmstart(cfg, workdir):
    from hqf_jax.rl.warmstart import build_warmstart_task
    from hqf_jax.trainer import lm_task

    model = lm_task.load_run(cfg.rl.init_from)[0] if cfg.rl.init_from else lm_task.build_model(cfg)
    task, codec = build_warmstart_task(cfg, model)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "codec.json").write_text(json.dumps(codec.to_json()))
    final = train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg))
    keys = ("completion_bpb", "warm_fidelity", "warm_ratio", "warm_codec_exact")
    return final, ", ".join(f"{k}={final[k]:.4f}" for k in keys if k in final)


def main(argv=None):
    args, cfg = cli.parse_args(__doc__, "configs/grpo.py", argv)
    maybe_initialize()
    workdir = args.workdir or cfg.workdir
    if cfg.get("mode", "grpo") == "warmstart":
        final, summary = warmstart(cfg, workdir)
        finish(final, workdir, summary, tag="warmstart")
        return
    task, _ = build_grpo_task(cfg, workdir)
    final = train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg))
    keys = ("rl/reward", "rl/fidelity", "rl/ratio", "eval_reward", "eval_fidelity", "eval_ratio")
    summary = ", ".join(f"{k}={final[k]:.4f}" for k in keys if k in final)
    finish(final, workdir, summary, tag="grpo")


if __name__ == "__main__":
    cli.run_main(main)
