"""The trainer's progress output: plain lines (no carriage returns) when stderr is not a terminal."""

from hqf_jax.trainer.metrics import Progress


def test_piped_progress_prints_plain_lines_and_no_bar(capsys):
    p = Progress(total=20, initial=0, enabled=True)
    for step in range(1, 21):
        p.update(1)
        if step % 10 == 0:
            p.log(step, loss="1.234", **{"bytes/s": "5,000"})
    p.write("[eval] step 20: valid_bpb=2.0")
    p.close()
    out, err = capsys.readouterr()
    assert out.splitlines() == ["[train] step 10/20 loss=1.234 bytes/s=5,000",
                                "[train] step 20/20 loss=1.234 bytes/s=5,000", "[eval] step 20: valid_bpb=2.0"]
    assert "\r" not in out + err


def test_disabled_progress_prints_only_written_lines(capsys):
    p = Progress(total=5, initial=0, enabled=False)
    p.update(5)
    p.log(5, loss="0.5")
    p.close()
    out, err = capsys.readouterr()
    assert out == "" and "\r" not in err
