"""Train RetNPhi (a pretrained HF decoder turned byte-level retention LM) on the shared loop:

    python -m train.retnphi [--config configs/retnphi_tiny.py] [--workdir DIR] [key=value ...]

model.train_mode=lora trains adapters + norms + byte embedding + byte head on a frozen base (only those are
in the optimizer state and the checkpoints; the adapter is also exported to <workdir>/adapter at the end);
model.train_mode=full trains every parameter. eval.bpb and eval.generate take the run folder like any
byte-LM run. Re-running the same command resumes.
"""

from pathlib import Path

from hqf_jax import cli
from hqf_jax.trainer import retnphi_task
from hqf_jax.trainer.distributed import maybe_initialize
from hqf_jax.trainer.loop import train
from hqf_jax.trainer.signals import finish


def main(argv=None):
    args, cfg = cli.parse_args(__doc__, "configs/retnphi_tiny.py", argv)
    maybe_initialize()
    workdir = Path(args.workdir or cfg.workdir)
    sha = retnphi_task.base_sha256(cfg)
    retnphi_task.check_same_base(workdir, sha)
    with cfg.unlocked():
        cfg.task = "retnphi"
    task, _ = retnphi_task.build_task(cfg)
    with cfg.unlocked():
        cfg.base_sha256 = sha  # recorded in the run's config.json: load_run refuses a changed base
    final = train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg))
    if final.get("signal"):  # stopped early: the adapter is exported when the run completes
        finish(final, workdir, tag="retnphi")
    if cfg.model.train_mode == "lora":
        from hqf_jax.nn.adapters_io import export_adapter
        from hqf_jax.nn.lora import LoRAConfig

        export_adapter(task.model, str(workdir / "adapter"), LoRAConfig.from_dict(cfg.model.lora.to_dict()),
                       trainable=task.trainable, base_sha256=sha, config=cfg.model.to_dict())
    summary = ", ".join(f"{k}={final[k]:.4f}" for k in ("loss", "valid_bpb") if k in final)
    finish(final, workdir, summary, tag="retnphi")


if __name__ == "__main__":
    cli.run_main(main)
