"""Train the RetNet byte LM:  python -m train.lm [--config configs/lm.py] [--workdir DIR] [key=value ...]

Re-running the same command resumes from the newest checkpoint of the run folder.
"""

from hqf_jax import cli
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.distributed import maybe_initialize
from hqf_jax.trainer.loop import train


def main(argv=None):
    args, cfg = cli.parse_args(__doc__, "configs/lm.py", argv)
    maybe_initialize()
    workdir = args.workdir or cfg.workdir
    task, _ = lm_task.build_task(cfg)
    final = train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg))
    summary = ", ".join(f"{k}={final[k]:.4f}" for k in ("loss", "valid_bpb") if k in final)
    print(f"[train] done at step {final['step']} in {workdir}: {summary}")


if __name__ == "__main__":
    cli.run_main(main)
