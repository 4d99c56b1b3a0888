"""Train the RetNet byte LM:  python -m train.lm [--config configs/lm.py] [--workdir DIR] [key=value ...]

Re-running the same command resumes from the newest checkpoint of the run folder. Exit status: 0 done
(or stopped early by train.patience), 143 / 130 stopped by SIGTERM / SIGINT after saving, 2 a user
error (one line), 1 anything else.
"""

from hqf_jax import cli
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.distributed import maybe_initialize
from hqf_jax.trainer.loop import train
from hqf_jax.trainer.signals import finish


def main(argv=None):
    args, cfg = cli.parse_args(__doc__, "configs/lm.py", argv)
    maybe_initialize()
    workdir = args.workdir or cfg.workdir
    task, _ = lm_task.build_task(cfg)
    final = train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg))
    summary = ", ".join(f"{k}={final[k]:.4f}" for k in ("loss", "valid_bpb") if k in final)
    finish(final, workdir, summary)  # "done at step N", or "stopped at step N" and exit 143/130 after a signal


if __name__ == "__main__":
    cli.run_main(main)
