"""Parse a benchmark's command line and stop before it does any work: a check, on a CPU, that a GPU command's flags
are what its module accepts (a flag misspelt costs a whole device call otherwise).

    python -m bench.parse_only bench.generate --configs configs/lm_1b.py --batches 64   # prints the namespace
    PARSE_ONLY=1 bash bench/run_gpu.sh generate_startup verify_profile                   # every command of groups

Exit status 0 when the module's argparse accepted the arguments, argparse's own 2 (and its message) when not. A train
entry's key=value overrides are parsed as words only: they are checked against the config when it loads, after this.
"""

from __future__ import annotations

import argparse
import runpy
import sys


PARSERS = ("parse_args", "parse_intermixed_args")  # hqf_jax.cli.parse: the train entries' key=value words anywhere


class Parsed(SystemExit):
    """Raised from parse_args once the arguments parsed: stops the module before its work."""


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    kept = {name: getattr(argparse.ArgumentParser, name) for name in PARSERS}

    def stopping(name):
        def parse_and_stop(self, *args, **kwargs):
            ns = kept[name](self, *args, **kwargs)
            print(f"parsed {argv[0]}: {vars(ns)}")
            raise Parsed(0)
        return parse_and_stop

    for name in PARSERS:
        setattr(argparse.ArgumentParser, name, stopping(name))
    saved_argv, sys.argv = sys.argv, list(argv)
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    except Parsed:
        return 0
    finally:
        sys.argv = saved_argv
        for name, f in kept.items():
            setattr(argparse.ArgumentParser, name, f)
    print(f"{argv[0]} ran to its end without parsing arguments through argparse", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
