"""Config loading and command-line overrides shared by every entry point.

A config is a python file whose ``get_config()`` returns an ``ml_collections.ConfigDict``.
Overrides are ``key.sub=value`` words after the options; the value is parsed as a python
literal and must match the type of the default. Unknown keys fail naming the valid ones.

    python -m train.lm --config configs/lm.py train.steps=200 model.d_model=128
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path
from typing import Callable

import ml_collections

from hqf_jax.errors import ConfigError, HqfError  # noqa: F401 (ConfigError re-exported for entry points)


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {path!r} does not exist; configs live in configs/*.py")
    spec = importlib.util.spec_from_file_location(f"_hqf_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config() function")
    cfg = module.get_config(arg) if arg is not None else module.get_config()
    cfg.lock()
    return cfg


def _parse_value(raw: str, old):
    if isinstance(old, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if old is None:
        return value
    if isinstance(old, bool):
        if isinstance(value, bool):
            return value
        if str(raw).lower() in ("true", "false"):
            return str(raw).lower() == "true"
    elif isinstance(old, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(old, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(old)(value)
    raise ConfigError(f"value {raw!r} has the wrong type: expected {type(old).__name__} like {old!r}")


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (for example train.steps=100)")
        key, raw = item.split("=", 1)
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            valid = sorted(node.keys())
            if part not in valid:
                where = ".".join(parts[:i]) or "the config"
                raise ConfigError(f"unknown config key {key!r}: {where} has keys {valid}")
            if i < len(parts) - 1:
                node = node[part]
                if not isinstance(node, ml_collections.ConfigDict):
                    raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is a value, not a section")
        old = node[parts[-1]]
        if isinstance(old, ml_collections.ConfigDict):
            raise ConfigError(f"config key {key!r} is a section with keys {sorted(old.keys())}; set one of them")
        try:
            with node.unlocked():
                node[parts[-1]] = _parse_value(raw, old)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
    return cfg


def config_to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(text))


def parse_args(description: str, default_config: str, argv: list[str] | None = None, extra: Callable | None = None):
    """Standard entry-point arguments: --config, --workdir and key=value overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_config, help=f"python config file (default {default_config})")
    parser.add_argument("--workdir", default=None, help="run folder (default: the config's workdir); re-running resumes")
    if extra:
        extra(parser)
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args(argv)
    cfg = apply_overrides(load_config_file(args.config), args.overrides)
    return args, cfg


def run_main(fn: Callable[[], None]) -> None:
    """Run an entry point; user errors print one line and exit 2 instead of a traceback."""
    try:
        fn()
    except HqfError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
