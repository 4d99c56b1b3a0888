"""bench.parse_only: a GPU command's flags checked on a CPU, nothing run."""

import argparse
import sys

import pytest

from bench import parse_only


def test_accepted_flags_parse_and_nothing_runs(capsys):
    assert parse_only.main(["bench.generate", "--configs", "configs/lm_1b.py", "--batches", "64,256"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("parsed bench.generate: ") and "'batches': '64,256'" in out
    assert "bytes/s" not in out  # stopped before the copy-bandwidth probe and any row


def test_train_entry_words_parse_without_loading_the_config(capsys):
    # a data path that does not exist here (it does on the GPU machine): only the words are parsed
    assert parse_only.main(["train.lm", "--config", "configs/lm_125m.py", "--workdir", "/tmp/r", "data.paths=/nope",
                            "train.steps=3"]) == 0
    assert "'overrides': ['data.paths=/nope', 'train.steps=3']" in capsys.readouterr().out


def test_a_misspelt_flag_fails_as_argparse_does(capsys):
    with pytest.raises(SystemExit) as e:
        parse_only.main(["bench.generate", "--batchez", "64"])  # (a prefix, --batch, is argparse-legal)
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    assert argparse.ArgumentParser.parse_args.__name__ == "parse_args"  # the module's patch undone
    assert "--batchez" not in sys.argv  # and this process's argv given back
