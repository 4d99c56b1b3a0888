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
from hqf_jax.trainer.signals import finish


def main(argv=None):
    args, cfg = cli.parse_args(__doc__, "configs/token_lm.py", argv)
    maybe_initialize()
    workdir = Path(args.workdir or cfg.workdir)
    final, out = token_task.train_and_export(cfg, workdir, cli.config_to_json(cfg))
    if out is None:  # stopped early: the HF folder is written when the run completes
        finish(final, workdir, tag="token_lm")
    summary = ", ".join(f"{k}={final[k]:.4f}" for k in ("loss", "valid_bpb") if k in final)
    finish(final, None, f"{summary}; HF folder {out}", tag="token_lm")


if __name__ == "__main__":
    cli.run_main(main)
