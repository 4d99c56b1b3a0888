"""Train the token model the RetNPhi bootstrap starts from, and export it in HF format:

    python -m train.token_lm [--config configs/token_lm.py] [--workdir DIR] [key=value ...]

Trains a byte-level BPE tokenizer on the corpus (once per run folder), a Llama-style decoder on the
shared loop, then writes <workdir>/hf: config.json + model.safetensors + tokenizer.json +
tokenizer_config.json (+ training.json), loadable by hqf_jax.nn.hf_loading.load_hf_decoder and by
transformers' AutoModelForCausalLM / AutoTokenizer. Re-running the same command resumes.
"""

from pathlib import Path

from hqf_jax import cli
from hqf_jax.trainer import token_task
from hqf_jax.trainer.distributed import maybe_initialize
from hqf_jax.trainer.loop import train
from hqf_jax.trainer.signals import finish


def main(argv=None):
    args, cfg = cli.parse_args(__doc__, "configs/token_lm.py", argv)
    maybe_initialize()
    workdir = Path(args.workdir or cfg.workdir)
    task, hf_config, tokenizer = token_task.build_task(cfg, workdir)
    final = train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg))
    if final.get("signal"):  # stopped early: the HF folder is written when the run completes
        finish(final, workdir, tag="token_lm")
    info = {"steps": int(final["step"]), "tokens": int(final["step"]) * task.units_per_step,
            "train_flops": float(final["step"]) * task.flops_per_step, "params": token_task.count_params(task.model), "vocab": len(tokenizer),
            **{k: float(final[k]) for k in ("loss", "valid_loss", "valid_bpb", "valid_bytes_per_token") if k in final}}
    out = token_task.save_hf(task.model, hf_config, tokenizer, workdir / "hf", info)
    summary = ", ".join(f"{k}={final[k]:.4f}" for k in ("loss", "valid_bpb") if k in final)
    finish(final, None, f"{summary}; HF folder {out}", tag="token_lm")


if __name__ == "__main__":
    cli.run_main(main)
