"""A study's output folder: its table as markdown and its numbers as JSON, side by side in one place."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


def write_report(out: str | Path, table_md: str, results) -> Path:
    """Write ``<out>/table.md`` and ``<out>/results.json`` (dataclasses become dicts); return the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table_md.rstrip() + "\n")
    if dataclasses.is_dataclass(results):
        results = dataclasses.asdict(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return out


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """Lay out, write and close a matplotlib figure (a study's plot beside its table)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
