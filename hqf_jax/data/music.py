"""Music from under 100 songs: tunes in ABC notation from the corpus that ``music21`` installs.

A collection (default O'Neill's 1850, about 1,850 Irish tunes) is split into tunes at its ``X:``
lines, each tune is written in one canonical form (``X:1``, then the ``T M L R K`` header fields
with no space after the colon, then the body; notes, transcriber and source lines dropped) and
ends with a blank line, so a generated tune ends where the model writes an empty line.

The split is a seeded rule independent of file order: tunes are ranked by sha256(f"{seed}:{key}")
(key = the collection and the tune's number), the first ``num_tunes`` tunes that music21 parses
train the model and the rest of the collection is held out. Tunes music21 cannot parse, or that
lack a meter/key/body, are skipped and counted (``ByteCorpus.skipped``, printed in the log).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from hqf_jax.data.corpus import ByteCorpus
from hqf_jax.data.registry import register
from hqf_jax.errors import DataError

HEADER_FIELDS = ("T", "M", "L", "R", "K")  # kept, in this order; X is renumbered to 1
BODY_FIELDS = ("K", "M", "L", "P")  # inline field lines kept inside a body (key/meter changes, parts)
NUMBERED = {"oneills1850"}  # collections whose X: numbers name a tune across files (alternative transcriptions)
TUNE_PROMPT = "X:1\nT:"
_FIELD = re.compile(r"^([A-Za-z]):\s*(.*?)\s*$")


@dataclass(frozen=True)
class Tune:
    key: str  # "collection/number" (or "collection/file#number"): unique within a collection
    text: str  # canonical ABC, ending in "\n\n"


def corpus_root() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


def collection_files(collection: str) -> list[Path]:
    folder = corpus_root() / collection
    files = sorted(folder.glob("*.abc")) if folder.is_dir() else []
    if not files:
        have = sorted(p.name for p in corpus_root().iterdir() if p.is_dir() and any(p.glob("*.abc")))
        raise DataError(f"music21's corpus has no ABC collection {collection!r}; set data.collection to one of {have}")
    return files


def split_tunes(text: str) -> list[str]:
    """Raw tunes of an ABC file: each starts at a line ``X:...``; text before the first is dropped."""
    tunes, cur = [], None
    for line in text.splitlines():
        if line.startswith("X:"):
            if cur is not None:
                tunes.append("\n".join(cur))
            cur = [line]
        elif cur is not None:
            cur.append(line)
    if cur is not None:
        tunes.append("\n".join(cur))
    return tunes


def tune_number(raw: str) -> str:
    m = _FIELD.match(raw.splitlines()[0])
    return m.group(2) if m else ""


def canonical_tune(raw: str) -> str | None:
    """The canonical form of one raw tune, or None when it has no meter, key or body."""
    header: dict[str, str] = {}
    body: list[str] = []
    in_body = False
    for line in raw.splitlines()[1:]:
        line = line.rstrip()
        if not line.strip() or line.lstrip().startswith("%"):
            if in_body and body and not line.strip():
                break  # a blank line ends the tune
            continue
        m = _FIELD.match(line)
        is_field = m is not None
        if not in_body:
            if m is None:
                continue
            name, value = m.group(1), m.group(2)
            if name in HEADER_FIELDS and name not in header:
                header[name] = value
            if name == "K":
                in_body = True
        elif is_field and m.group(1) in BODY_FIELDS:
            body.append(f"{m.group(1)}:{m.group(2)}")
        elif is_field:
            continue  # lyrics, notes, sources inside the body
        else:
            body.append(line)
    if "M" not in header or "K" not in header or not body:
        return None
    head = ["X:1"] + [f"{f}:{header[f]}" for f in HEADER_FIELDS if f in header]
    return "\n".join(head + body) + "\n\n"


def load_collection(collection: str) -> tuple[list[Tune], int]:
    """(tunes, skipped) of one collection; for a numbered collection the first tune of each number wins."""
    tunes: list[Tune] = []
    seen: set[str] = set()
    skipped = 0
    for path in collection_files(collection):
        for raw in split_tunes(path.read_text(encoding="latin-1")):
            num = tune_number(raw)
            key = f"{collection}/{num}" if collection in NUMBERED else f"{collection}/{path.stem}#{num}"
            if key in seen:
                continue
            seen.add(key)
            text = canonical_tune(raw)
            if text is None:
                skipped += 1
                continue
            tunes.append(Tune(key, text))
    return tunes, skipped


def rank(tunes: list[Tune], seed: int) -> list[Tune]:
    return sorted(tunes, key=lambda t: hashlib.sha256(f"{seed}:{t.key}".encode()).digest())


def parse_tune(text: str):
    """The music21 score of a tune's text; raises on text music21 cannot parse."""
    from music21 import converter

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # music21 prints its warnings
        warnings.simplefilter("ignore")
        return converter.parse(text, format="abc")


def parses(text: str) -> bool:
    try:
        score = parse_tune(text)
        return len(score.recurse().notes) > 0
    except Exception:  # music21 raises many kinds of errors on malformed ABC
        return False


@dataclass
class MeterCheck:
    parsed: bool
    bars: int = 0  # measures in the first part
    full_bars: int = 0
    bad_bars: int = 0  # interior measures whose length differs from the meter's bar
    error: str = ""

    @property
    def valid(self) -> bool:
        """Parses, has at least 4 full bars, and every bar away from a section edge fills the meter."""
        return self.parsed and self.full_bars >= 4 and self.bad_bars == 0


def _edge(barline) -> bool:
    return barline is not None and (barline.type in ("double", "final", "heavy-light", "light-heavy", "heavy-heavy")
                                    or type(barline).__name__ == "Repeat")


_METER = re.compile(r"(?:^|\[)M:\s*([^\]\n]+)", re.M)


def declared_meters(text: str) -> set[str]:
    """Ratio strings ("6/8") of the meters the text declares in ``M:`` fields (C is 4/4, C| 2/2)."""
    from music21 import meter

    out = set()
    for v in _METER.findall(text):
        v = v.strip()
        fixed = {"C": "4/4", "C|": "2/2"}.get(v)
        if fixed:
            out.add(fixed)
            continue
        try:
            out.add(meter.TimeSignature(v).ratioString)
        except Exception:  # noqa: BLE001  ("none", free meter): no bar length to check against
            pass
    return out


def check_meter(text: str) -> MeterCheck:
    """Do the bars add up to the meter? Short bars are allowed only at a section edge (first or last
    bar, or next to a double/final/repeat barline: pickups and their completing bars); every other
    bar must last exactly one bar of the declared time signature in force. music21 splits an
    overfull bar and gives the spill an undeclared meter: such a bar counts as bad."""
    try:
        score = parse_tune(text)
    except Exception as e:  # noqa: BLE001
        return MeterCheck(False, error=f"{type(e).__name__}: {str(e)[:80]}")
    parts = getattr(score, "parts", None)
    part = parts[0] if parts is not None and len(parts) else score
    measures = list(part.getElementsByClass("Measure"))
    if not measures or not len(score.recurse().notes):
        return MeterCheck(False, error="no measures")
    res = MeterCheck(True, bars=len(measures))
    declared = declared_meters(text)
    if not declared:
        return MeterCheck(False, error="no meter declared")
    ts = None
    for i, m in enumerate(measures):
        if m.timeSignature is not None:
            if m.timeSignature.ratioString not in declared:
                # music21 splits an overfull bar and gives the spill a meter of its own
                res.bad_bars += 1
                continue
            ts = m.timeSignature
        if ts is None:
            ts = m.getContextByClass("TimeSignature")
        if ts is None:
            return MeterCheck(False, error="no time signature")
        want = Fraction(ts.barDuration.quarterLength).limit_denominator(1 << 12)
        have = Fraction(m.duration.quarterLength).limit_denominator(1 << 12)
        if have == want:
            res.full_bars += 1
            continue
        edge = (i == 0 or i == len(measures) - 1 or _edge(m.leftBarline) or _edge(m.rightBarline)
                or _edge(measures[i - 1].rightBarline) or (i + 1 < len(measures) and _edge(measures[i + 1].leftBarline)))
        if have > want or not edge:
            res.bad_bars += 1
    return res


def select_tunes(tunes: list[Tune], num_tunes: int, seed: int, max_valid_tunes: int,
                 check=parses) -> tuple[list[Tune], list[Tune], int]:
    """(train, held-out, skipped): the first ``num_tunes`` ranked tunes that ``check`` accepts train,
    the next ``max_valid_tunes`` accepted ones (0: all) are the held-out set."""
    if not 0 < num_tunes <= 100:
        raise DataError(f"data.num_tunes={num_tunes}: the music path trains on 1 to 100 tunes")
    train, valid, skipped = [], [], 0
    for t in rank(tunes, seed):
        if max_valid_tunes and len(valid) >= max_valid_tunes and len(train) >= num_tunes:
            break
        if not check(t.text):
            skipped += 1
            continue
        (train if len(train) < num_tunes else valid).append(t)
    if len(train) < num_tunes or not valid:
        raise DataError(f"the collection holds {len(train) + len(valid)} parseable tunes, not enough for "
                        f"data.num_tunes={num_tunes} plus a held-out set; lower data.num_tunes")
    return train, valid, skipped


def load_music(collection: str = "oneills1850", num_tunes: int = 64, seed: int = 0,
               max_valid_tunes: int = 200) -> ByteCorpus:
    tunes, bad_form = load_collection(collection)
    train, valid, bad_parse = select_tunes(tunes, num_tunes, seed, max_valid_tunes)
    skipped = bad_form + bad_parse
    if skipped:
        print(f"[music] skipped {skipped} tunes of {collection} ({bad_form} without meter/key/body, "
              f"{bad_parse} that music21 cannot parse)")
    desc = (f"music21 {collection}: {num_tunes} training tunes by seeded rank (seed {seed}), "
            f"{len(valid)} held out of {len(tunes)}")
    return ByteCorpus([(t.key, t.text.encode()) for t in train], [(t.key, t.text.encode()) for t in valid], desc, skipped)


@register("music")
def _music_source(cfg) -> ByteCorpus:
    return load_music(cfg.get("collection", "oneills1850"), int(cfg.get("num_tunes", 64)),
                      int(cfg.get("select_seed", 0)), int(cfg.get("max_valid_tunes", 200)))


def cut_tune(generated: str) -> str:
    """A generated continuation of ``TUNE_PROMPT`` cut at its first blank line, as a tune text."""
    text = TUNE_PROMPT + generated
    end = text.find("\n\n")
    return text if end < 0 else text[: end + 2]
