"""The byte-LM task on the shared loop: model from config, next-byte loss in bits, bpb eval, samples.

Also ``load_run``: rebuild the model of a run folder from its config.json and restore its
newest (or a given) checkpoint, for eval and generation.
"""

from __future__ import annotations

import functools

import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hqf_jax import cli
from hqf_jax.data.batching import WindowSampler, eval_windows, to_example
from hqf_jax.data.catalog import load_corpus
from hqf_jax.data.corpus import ByteCorpus
from hqf_jax.nn import generate
from hqf_jax.errors import CheckpointError, ConfigError
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM, count_params
from hqf_jax.nn.transformer import TransformerConfig, TransformerLM
from hqf_jax.ops.attention import causal_attention_macs_per_position
from hqf_jax.trainer.checkpoint import Checkpointer, abstract_like
from hqf_jax.trainer.loop import Task

LN2 = float(np.log(2.0))


ARCHS = ("retnet", "transformer")  # model.arch: the RetNet byte LM, or the standard decoder baseline


def model_config(model_cfg) -> RetNetConfig | TransformerConfig:
    """The model config that ``model.arch`` names; the transformer is matched in size to the RetNet."""
    arch = model_cfg.get("arch", "retnet")
    if arch not in ARCHS:
        raise ConfigError(f"model.arch={arch!r} is not one of {ARCHS}")
    return TransformerConfig.from_dict(model_cfg) if arch == "transformer" else RetNetConfig.from_dict(model_cfg)


def build_model(cfg) -> RetNetLM | TransformerLM:
    mcfg = model_config(cfg.model)
    model_cls = TransformerLM if isinstance(mcfg, TransformerConfig) else RetNetLM
    return model_cls(mcfg, nnx.Rngs(cfg.train.seed))


def model_flops_per_byte(mcfg: RetNetConfig | TransformerConfig, seq_len: int) -> float:
    """Training FLOPs per byte (forward + backward = 3x forward, 2 FLOPs per multiply-add): 6 x matmul
    params plus the sequence-mixing terms. RetNet: chunkwise retention (intra-chunk scores and values,
    cross-chunk state read and write). Transformer (and the RetNet's attention mixer): causal attention,
    (T+1)/2 keys per position on average -- the work a causal flash kernel does."""
    c = mcfg
    if isinstance(c, TransformerConfig):
        matmul = c.num_layers * (4 * c.d_model**2 + 3 * c.d_model * c.ffn_dim) + c.d_model * c.vocab_size
        mixing = c.num_layers * causal_attention_macs_per_position(seq_len, c.d_model)
        return 6.0 * matmul + 6.0 * mixing
    matmul = c.num_layers * (c.d_model * (2 * c.qk_dim + 2 * c.v_dim) + c.v_dim * c.d_model + 3 * c.d_model * c.ffn_dim)
    matmul += c.d_model * c.vocab_size
    if c.mixer == "attention":  # q and k repeated for each value part: scores over v_dim columns, values too
        mixing = c.num_layers * causal_attention_macs_per_position(seq_len, c.v_dim)
        return 6.0 * matmul + 6.0 * mixing
    dk, dv = c.qk_dim // c.num_heads, c.v_dim // c.num_heads
    chunk = min(c.chunk_size, seq_len)
    retention = c.num_layers * c.num_heads * (chunk * (dk + dv) + 3 * dk * dv)  # per position, multiply-adds
    return 6.0 * matmul + 6.0 * retention


def next_byte_loss(model, batch, rng, extra_heads_weight: float = 0.0):
    """Mean next-byte NLL in nats; with extra heads (model.extra_heads = k, RetNPhi's retnphi.extra_heads) plus
    extra_heads_weight x the mean of the heads' NLLs (head j against the byte j + 1 places further on); bpb reports
    the main head only. ``rng`` (the step's) drives the model's dropout when it has one."""
    cfg = getattr(model, "cfg", None)
    kw = {"dropout_rng": rng} if getattr(cfg, "dropout", 0.0) else {}
    if not getattr(model, "extra_heads", None):  # the byte LM and RetNPhi hold their heads only when k > 0
        logits = model(batch["inputs"], **kw)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        loss = nll.mean()
        return loss, {"bpb": loss / LN2}
    logits, hidden = model(batch["inputs"], return_hidden=True, **kw)
    targets = batch["targets"]
    main = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    extra = model.extra_logits(hidden)
    metrics = {"bpb": main / LN2}
    head_losses = []
    for j in range(extra.shape[0]):
        nll = optax.softmax_cross_entropy_with_integer_labels(extra[j][:, :-(j + 1)], targets[:, j + 1:]).mean()
        metrics[f"extra_head{j + 1}_bpb"] = nll / LN2
        head_losses.append(nll)
    return main + extra_heads_weight * jnp.mean(jnp.stack(head_losses)), metrics


def make_eval_fn(stream: np.ndarray, seq_len: int, batch_size: int, max_bytes: int):
    windows = eval_windows(stream, seq_len, max_bytes)

    @nnx.jit
    def nll_sum(model, inputs, targets, rows):
        logits = model(inputs)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum(-1)
        return jnp.where(rows, nll, 0.0).sum()

    def evaluate(model) -> dict[str, float]:
        total = 0.0
        for i in range(0, len(windows), batch_size):
            chunk = windows[i:i + batch_size]
            rows = np.arange(batch_size) < len(chunk)
            if len(chunk) < batch_size:  # pad the last batch (rows masked out) so the eval compiles once
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk), axis=0)])
            ex = to_example(chunk)
            total += float(nll_sum(model, jnp.asarray(ex["inputs"]), jnp.asarray(ex["targets"]), jnp.asarray(rows)))
        return {"valid_bpb": total / windows.size / LN2}

    return evaluate


def make_sample_fn(prompt: str, length: int, seed: int):
    def sample_text(model, step) -> str:
        ids = generate.sample(model, jnp.asarray(generate.encode_prompt(prompt.encode()))[None], length,
                              jax.random.PRNGKey(seed + step), temperature=0.8, top_p=0.95)
        return (prompt.encode() + generate.decode(ids)).decode("utf-8", "replace")

    return sample_text


def build_task(cfg, corpus: ByteCorpus | None = None) -> tuple[Task, ByteCorpus]:
    corpus = corpus or load_corpus(cfg.data)
    model = build_model(cfg)
    sampler = WindowSampler(corpus.reader("train"), cfg.data.seq_len, cfg.data.batch_size, cfg.train.seed)
    bytes_per_step = cfg.data.seq_len * cfg.data.batch_size
    task = Task(
        model=model,
        loss_fn=functools.partial(next_byte_loss, extra_heads_weight=float(cfg.train.get("extra_heads_weight", 0.0))),
        batch_fn=sampler,
        eval_fn=make_eval_fn(corpus.reader("valid"), cfg.data.seq_len, cfg.data.batch_size, cfg.train.eval_max_bytes),
        # the transformer keeps no KV cache: no samples (it trains and scores)
        sample_fn=None if isinstance(model, TransformerLM) else make_sample_fn(cfg.train.sample_prompt,
                                                                                cfg.train.sample_len, cfg.train.seed),
        units_per_step=bytes_per_step,
        flops_per_step=model_flops_per_byte(model.cfg, cfg.data.seq_len) * bytes_per_step,
    )
    if "chamber" in cfg:  # the training chamber's interventions (hqf_jax/trainer/interventions.py)
        from hqf_jax.trainer import interventions

        task.interventions = interventions.from_config(cfg, task, build_model)
    print(f"[lm] {type(model).__name__} {count_params(model):,} parameters; {corpus.summary()}")
    return task, corpus


def read_run_config(workdir: str | Path):
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{workdir} is not a run folder (no config.json); pass the --workdir of a training run")
    return cli.config_from_json(path.read_text())


# run config's `task` key -> "module:function" that rebuilds its model from the config, returning the model
# or (model, trainable filter) when only part of it trains (the checkpoint holds that part)
BUILDERS = {"lm": "hqf_jax.trainer.lm_task:build_model", "retnphi": "hqf_jax.trainer.retnphi_task:build_model"}


def builder_for(cfg):
    """The model builder a run's config names (``task``, default "lm")."""
    kind = cfg.get("task", "lm")
    if kind not in BUILDERS:
        raise CheckpointError(f"run task {kind!r} is not a byte LM; eval.bpb and eval.generate take runs of {sorted(BUILDERS)}")
    module, name = BUILDERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_run(workdir: str | Path, step: int | str | None = None, build=None, with_label: bool = False):
    """(model with restored params, config, step) of a run folder; ``build`` defaults to the config's builder.

    ``step``: a saved step, "latest" (also None) or "best" (the best-validation step the trainer recorded,
    else the newest). A corrupt step fails naming it and the newest intact step before it. With
    ``with_label`` a fourth item says how the step was chosen (e.g. "best valid_bpb=2.1034")."""
    cfg = read_run_config(workdir)
    built = (build or builder_for(cfg))(cfg)
    model, trainable = built if isinstance(built, tuple) else (built, nnx.Param)
    graphdef, params, rest = nnx.split(model, trainable, ...)
    ckpt = Checkpointer(workdir, async_save=False)
    from hqf_jax.trainer.checkpoint import CorruptCheckpoint
    from hqf_jax.trainer.optim import make_optimizer

    tx, _ = make_optimizer(cfg.train)
    abstract = abstract_like({"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": jax.eval_shape(tx.init, params)})
    try:
        step, label = ckpt.resolve(step)
        try:
            state = ckpt.restore(step, abstract)
        except CorruptCheckpoint as e:
            intact, _ = ckpt.newest_intact(abstract, below=step)
            offer = f"the newest intact step before it is {intact} (--step {intact})" if intact is not None else \
                "no earlier step is intact"
            raise CheckpointError(f"{e}; {offer}") from None
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, state["params"], rest)
    return (model, cfg, step, label) if with_label else (model, cfg, step)
