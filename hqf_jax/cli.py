"""Config loading and command-line overrides shared by every entry point.

A config is a python file whose ``get_config()`` returns an ``ml_collections.ConfigDict``.
Overrides are ``key.sub=value`` words, anywhere among the options (argparse's intermixed parsing);
the value is parsed as a python literal and must match the type of the default. Unknown keys fail
naming the valid ones, and the result is validated (``hqf_jax.config_checks``: ranges, divisibility)
before anything is built.

    python -m train.lm --config configs/lm.py train.steps=200 --workdir runs/x model.d_model=128
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

import ml_collections

from hqf_jax import config_checks
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
    """A copy of ``cfg`` with ``key.sub=value`` overrides applied; ``cfg`` itself is left as it was (configs
    derived from one base, e.g. a study's arms, never change the base or each other)."""
    cfg = copy.deepcopy(cfg)
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


def load_config(path: str, overrides: list[str] = (), arg: str | None = None) -> ml_collections.ConfigDict:
    """A config file with ``key=value`` overrides applied, validated (config_checks.check): what every
    entry point runs on."""
    cfg = apply_overrides(load_config_file(path, arg), list(overrides))
    config_checks.check(cfg)
    return cfg


def add_overrides(parser: argparse.ArgumentParser, help: str = "config overrides key.sub=value") -> None:
    """The positional ``key=value`` words; parse with ``parse`` so they may stand anywhere among the options."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_intermixed_args``: ``a=1 --workdir x b=2`` gives overrides [a=1, b=2] (plain
    ``parse_args`` stops collecting positionals at the first option and refuses the rest)."""
    return parser.parse_intermixed_args(argv)


def parse_args(description: str, default_config: str, argv: list[str] | None = None, extra: Callable | None = None):
    """Standard entry-point arguments: --config, --workdir and key=value overrides (anywhere)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_config, help=f"python config file (default {default_config})")
    parser.add_argument("--workdir", default=None, help="run folder (default: the config's workdir); re-running resumes")
    if extra:
        extra(parser)
    add_overrides(parser)
    args = parse(parser, argv)
    cfg = load_config(args.config, args.overrides)
    workdir = args.workdir or cfg.get("workdir")
    if workdir:
        check_writable(workdir)
    return args, cfg


def check_writable(workdir: str | os.PathLike) -> None:
    """Refuse, in one line, a run folder that cannot be written (read-only file system, no permission):
    the folder and the subfolders a run writes when they exist, else the nearest existing parent that
    would hold it. Creates nothing (a probe file is made and removed)."""
    path = os.path.abspath(workdir)
    probe = [path] + [os.path.join(path, d) for d in ("checkpoints", "tb") if os.path.isdir(os.path.join(path, d))]
    if not os.path.isdir(path):
        parent = path
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ConfigError(f"run folder {workdir}: {parent} is a file, not a folder; pass another --workdir")
        probe = [parent]
    for folder in probe:
        try:
            fd, name = tempfile.mkstemp(prefix=".hqf_write_probe_", dir=folder)
            os.close(fd)
            os.remove(name)
        except OSError as e:
            raise ConfigError(f"run folder {workdir} cannot be written ({folder}: {e.strerror or e}); "
                              "pass a --workdir on a writable disk") from None


_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|[\\'\"abfnrtv]|x|.|$)", re.S)
_SIMPLE_ESCAPES = {b"\\": b"\\", b"'": b"'", b'"': b'"', b"a": b"\a", b"b": b"\b", b"f": b"\f", b"n": b"\n",
                   b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def unescape_bytes(text: str, what: str = "--prompt") -> bytes:
    """The bytes a command-line word stands for: its own bytes (argv that is not valid UTF-8 comes back
    byte for byte, through Python's surrogateescape) with backslash escapes read as in a python bytes
    literal: \\xHH, \\n, \\t, \\r, \\0 (octal up to \\377), \\\\; an unknown escape such as \\d stays as written."""

    def one(m: re.Match) -> bytes:
        e = m.group(1)
        if len(e) == 3 and e[:1] == b"x":
            return bytes([int(e[1:], 16)])
        if e in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[e]
        if e[:1].isdigit() and all(c in b"01234567" for c in e):
            if int(e, 8) > 255:
                raise ConfigError(f"{what}: octal escape \\{e.decode()} is above \\377 (one byte); use \\xHH")
            return bytes([int(e, 8)])
        if e == b"x":
            raise ConfigError(f"{what}: \\x needs two hex digits (\\x00 to \\xff); write \\\\x for a backslash and x")
        if e == b"":
            raise ConfigError(f"{what} ends in a lone backslash; write \\\\ for a backslash")
        return b"\\" + e

    return _ESCAPE.sub(one, text.encode("utf-8", "surrogateescape"))


def write_bytes(data: bytes, stream=None) -> None:
    """Write raw bytes to stdout (or ``stream``): its binary buffer when it has one, else the text with
    undecodable bytes as \\x escapes (never a UnicodeError)."""
    stream = stream or sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        stream.write(data.decode("utf-8", "backslashreplace"))
        stream.flush()


def run_main(fn: Callable[[], None]) -> None:
    """Run an entry point; user errors print one line and exit 2 instead of a traceback."""
    try:
        fn()
    except HqfError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
