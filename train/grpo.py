"""GRPO on the Kolmogorov compressor:  python -m train.grpo [--config configs/grpo.py] [--workdir DIR] [key=value ...]

Re-running the same command resumes from the newest checkpoint of the run folder (parameters,
optimizer, and the host state: history buffer, relaxation schedule, memories).
"""

from hqf_jax import cli
from hqf_jax.rl.grpo_task import build_grpo_task
from hqf_jax.trainer.distributed import maybe_initialize
from hqf_jax.trainer.loop import train
from hqf_jax.trainer.signals import finish


def main(argv=None):
    args, cfg = cli.parse_args(__doc__, "configs/grpo.py", argv)
    maybe_initialize()
    workdir = args.workdir or cfg.workdir
    task, _ = build_grpo_task(cfg, workdir)
    final = train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg))
    keys = ("rl/reward", "rl/fidelity", "rl/ratio", "eval_reward", "eval_fidelity", "eval_ratio")
    summary = ", ".join(f"{k}={final[k]:.4f}" for k in keys if k in final)
    finish(final, workdir, summary, tag="grpo")


if __name__ == "__main__":
    cli.run_main(main)
