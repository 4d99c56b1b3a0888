"""Music path: ABC tunes from music21's corpus, canonical form, seeded split, meter check, skips counted."""

import ml_collections
import pytest

from hqf_jax.data import music
from hqf_jax.data.catalog import load_corpus
from hqf_jax.errors import DataError

RAW = """% a comment before the first tune
X: 12
T: A Test Reel
T: second title dropped
N: "collected by nobody"
Z: transcriber
M: 2/4
L: 1/8
R: reel
K:G
|: GA | B2 d2 | c2 A2 | B2 G2 | A4 :|
w: some lyric line
K:D
d2 f2 | e2 c2 | d4 ||

X: 13
T: No meter here
K:G
abc|
"""


def test_split_and_canonical_form():
    tunes = music.split_tunes(RAW)
    assert len(tunes) == 2 and music.tune_number(tunes[0]) == "12"
    text = music.canonical_tune(tunes[0])
    assert text == ("X:1\nT:A Test Reel\nM:2/4\nL:1/8\nR:reel\nK:G\n|: GA | B2 d2 | c2 A2 | B2 G2 | A4 :|\nK:D\n"
                    "d2 f2 | e2 c2 | d4 ||\n\n")
    assert music.canonical_tune(tunes[1]) is None  # no meter: skipped


def test_meter_check_accepts_pickups_and_rejects_wrong_bars():
    good = music.canonical_tune(music.split_tunes(RAW)[0])
    assert music.check_meter(good).valid
    bad = good.replace("c2 A2 |", "c2 A2 A |")  # an interior bar one eighth too long
    r = music.check_meter(bad)
    assert r.parsed and r.bad_bars == 1 and not r.valid
    assert not music.check_meter("X:1\nT:x\nK:G\nzzzz##@@!!\n").valid  # music21 cannot parse it (no L)


def test_seeded_selection_is_deterministic_and_disjoint():
    tunes = [music.Tune(f"c/{i}", f"X:1\nT:t{i}\nM:2/4\nL:1/8\nK:G\nGA|\n\n") for i in range(50)]
    a_train, a_valid, skipped = music.select_tunes(tunes, 10, seed=3, max_valid_tunes=20, check=lambda t: "t7\n" not in t)
    b_train, b_valid, _ = music.select_tunes(list(reversed(tunes)), 10, seed=3, max_valid_tunes=20,
                                             check=lambda t: "t7\n" not in t)
    assert a_train == b_train and a_valid == b_valid  # independent of input order
    assert len(a_train) == 10 and len(a_valid) == 20 and not {t.key for t in a_train} & {t.key for t in a_valid}
    assert all(t.key != "c/7" for t in a_train + a_valid)
    assert skipped <= 1
    c_train, _, _ = music.select_tunes(tunes, 10, seed=4, max_valid_tunes=20)
    assert c_train != a_train
    with pytest.raises(DataError, match="1 to 100"):
        music.select_tunes(tunes, 101, 0, 0)


def test_music_source_on_the_installed_corpus():
    cfg = ml_collections.ConfigDict(dict(source="music", collection="oneills1850", num_tunes=8, select_seed=0,
                                         max_valid_tunes=6, valid_fraction=0.0))
    c = load_corpus(cfg)
    assert len(c.train) == 8 and len(c.valid) == 6
    assert all(d.startswith(b"X:1\nT:") and d.endswith(b"\n\n") for _, d in c.train + c.valid)
    assert not {n for n, _ in c.train} & {n for n, _ in c.valid}
    with pytest.raises(DataError, match="data.collection"):
        music.collection_files("noSuchCollection")


def test_cut_tune_ends_at_the_blank_line():
    assert music.cut_tune("Name\nM:2/4\nK:G\nab|\n\nX:1\nT:next") == "X:1\nT:Name\nM:2/4\nK:G\nab|\n\n"
