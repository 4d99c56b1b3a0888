"""Config validation in one place: ranges and divisibility rules, checked when a config is loaded.

``check(cfg)`` runs on every config an entry point loads (``cli.load_config``), for every track:
each rule applies to the keys the config has, so one table serves the byte LM, GRPO, holo, RetNPhi
and the token LM. A violation is one ``ConfigError`` line naming the key, its value and the fix,
before anything is built (no ZeroDivisionError ten steps into a run).

The mesh is checked where it is built (``trainer.sharding.make_mesh``: its rules depend on the devices
present). The model's own shape rules stay with the model (``RetNetConfig.validate``); they are run from here
so a bad ``model.num_heads`` is caught at load, and the message lists values that would pass.
"""

from __future__ import annotations

import dataclasses

from hqf_jax.errors import ConfigError

# integers >= 1 (a period of 0 would divide by zero; a size of 0 has nothing to train)
POSITIVE_INTS = (
    "data.batch_size", "data.seq_len",
    "train.steps", "train.log_every", "train.eval_every", "train.ckpt_every", "train.sample_every", "train.keep",
    "train.eval_max_bytes", "train.eval_max_tokens", "train.batch_size", "train.dream_every", "train.grad_accum",
    "model.d_model", "model.num_layers", "model.num_heads", "model.qk_dim", "model.v_dim", "model.ffn_dim",
    "model.chunk_size",
    "model.hidden_size", "model.intermediate_size", "model.num_hidden_layers", "model.num_attention_heads",
    "model.num_key_value_heads", "model.max_position_embeddings",
    "model.retnphi.chunk_size", "model.lora.rank", "tokenizer.vocab_size",
    "rl.group_size", "rl.sources_per_step", "rl.updates_per_rollout",
)
# integers >= 0 (0 means "none" or "all", as each key's config file says)
NON_NEGATIVE_INTS = (
    "train.warmup_steps", "train.sample_len", "train.seed", "data.max_files", "train.eval_bytes",
    "train.max_train_bytes", "model.head_dim", "model.extra_heads",
    "model.retnphi.extra_heads",
)
# numbers > 0
POSITIVE_NUMBERS = ("train.lr", "model.norm_eps", "model.rms_norm_eps", "model.rope_theta")
# numbers >= 0
NON_NEGATIVE_NUMBERS = ("train.weight_decay", "train.grad_clip", "rl.c_temperature", "rl.d_temperature",
                        "train.extra_heads_weight")
# key -> (low, high, low included, high included)
FRACTIONS = {
    "data.valid_fraction": (0.0, 1.0, True, True),
    "train.min_lr_ratio": (0.0, 1.0, True, True),
    "train.b1": (0.0, 1.0, True, False),
    "train.b2": (0.0, 1.0, True, False),
    "model.lora.dropout": (0.0, 1.0, True, False),
    "rl.c_top_p": (0.0, 1.0, False, True),
    "rl.ccv_fraction": (0.0, 1.0, True, True),
}

_MISSING = object()


def dataclass_from_dict(cls, d, error: type[Exception], what: str, tuples: tuple[str, ...] = ()):
    """cls(**d) for a config dataclass: a key that is not a field raises ``error`` naming it and the valid ones
    ("unknown {what} keys"); the fields in ``tuples`` (lists in a config file) become tuples."""
    valid = {f.name for f in dataclasses.fields(cls)}
    bad = set(d) - valid
    if bad:
        raise error(f"unknown {what} keys {sorted(bad)}; valid: {sorted(valid)}")
    return cls(**{k: tuple(v) if k in tuples else v for k, v in dict(d).items()})


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        try:
            if part not in node:
                return _MISSING
            node = node[part]
        except TypeError:  # a value where a section was expected
            return _MISSING
    return node


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _interval(lo, hi, lo_in, hi_in) -> str:
    return f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def check(cfg) -> None:
    """Raise ConfigError (one line: key, value, fix) for the first rule ``cfg`` breaks."""
    for key in POSITIVE_INTS:
        v = _get(cfg, key)
        if v is not _MISSING and v is not None and (not _is_int(v) or v < 1):
            raise ConfigError(f"{key}={v!r}: must be an integer >= 1; set {key}=1 or more"
                              + (" (a period longer than train.steps runs once, at the end)" if key.endswith("_every") else ""))
    for key in NON_NEGATIVE_INTS:
        v = _get(cfg, key)
        if v is not _MISSING and v is not None and (not _is_int(v) or v < 0):
            raise ConfigError(f"{key}={v!r}: must be an integer >= 0; set {key}=0 or more")
    for key in POSITIVE_NUMBERS:
        v = _get(cfg, key)
        if v is not _MISSING and v is not None and (not _is_number(v) or not v > 0):
            raise ConfigError(f"{key}={v!r}: must be a number > 0")
    for key in NON_NEGATIVE_NUMBERS:
        v = _get(cfg, key)
        if v is not _MISSING and v is not None and (not _is_number(v) or not v >= 0):
            raise ConfigError(f"{key}={v!r}: must be a number >= 0")
    for key, (lo, hi, lo_in, hi_in) in FRACTIONS.items():
        v = _get(cfg, key)
        if v is _MISSING or v is None:
            continue
        ok = _is_number(v) and (lo <= v if lo_in else lo < v) and (v <= hi if hi_in else v < hi)
        if not ok:
            raise ConfigError(f"{key}={v!r}: must lie in {_interval(lo, hi, lo_in, hi_in)}")
    _check_retnet(cfg)
    _check_hf_decoder(cfg)


def _check_retnet(cfg) -> None:
    """The RetNet byte LM's shape rules (RetNetConfig.validate) on configs that describe one."""
    model = _get(cfg, "model")
    if model is _MISSING or "qk_dim" not in model or "num_heads" not in model:
        return
    from hqf_jax.nn.retnet import RetNetConfig  # here, not at the top: cli imports this module, and --help
                                                # or a bad key should not wait seconds for jax and flax

    mcfg = RetNetConfig.from_dict(model)
    try:
        mcfg.validate()
    except ValueError as e:
        msg = str(e)
        if "num_heads" not in msg:
            raise ConfigError(msg) from None

        def fits(h):
            try:
                dataclasses.replace(mcfg, num_heads=h).validate()
                return True
            except ValueError:
                return False

        ok = [h for h in range(1, min(mcfg.qk_dim, mcfg.v_dim) + 1) if fits(h)][:8]
        raise ConfigError(f"model.num_heads={mcfg.num_heads}: {msg}; with model.qk_dim={mcfg.qk_dim} and "
                          f"model.v_dim={mcfg.v_dim} use model.num_heads in {ok} (or change the widths)") from None


def _check_hf_decoder(cfg) -> None:
    """Head rules of an HF-style decoder config (the token LM's model part, LlamaConfig fields)."""
    model = _get(cfg, "model")
    if model is _MISSING or "num_attention_heads" not in model or "hidden_size" not in model:
        return
    heads, hidden = model["num_attention_heads"], model["hidden_size"]
    kv = model.get("num_key_value_heads") or heads
    head_dim = model.get("head_dim") or 0
    if not head_dim and hidden % heads:
        ok = [h for h in range(1, hidden + 1) if hidden % h == 0 and (hidden // h) % 2 == 0][:8]
        raise ConfigError(f"model.num_attention_heads={heads} does not divide model.hidden_size={hidden}; use one of "
                          f"{ok} or set model.head_dim")
    if heads % kv:
        ok = [k for k in range(1, heads + 1) if heads % k == 0]
        raise ConfigError(f"model.num_key_value_heads={kv} does not divide model.num_attention_heads={heads}; use one of {ok}")
    if (head_dim or hidden // heads) % 2:
        raise ConfigError(f"the head size {head_dim or hidden // heads} (model.head_dim, or hidden_size / "
                          "num_attention_heads) must be even for rotary positions")
