"""Writing the results: results.md (results_md.py), results.png (chart.py), results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import chart
import orjson
import results_md
from clients import CLIENTS
from figures import Row, medians


def write(out: Path, runs: list[Row], meta: dict[str, Any]) -> bool:
    """Write results.md/.json/.png under *out*; False if a client missed ids in (a) or (b)."""
    out.mkdir(parents=True, exist_ok=True)
    med = medians(runs)
    names = [c for c in CLIENTS if any(k[1] == c for k in med)]
    drawn = chart.draw(out / "results.png", med, names, meta)
    md = results_md.markdown(
        med, names, {**meta, "notes": [] if drawn else ["No results.png: no matplotlib."]}
    )
    (out / "results.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_bytes(
        orjson.dumps({"meta": meta, "runs": runs}, option=orjson.OPT_INDENT_2)
    )
    return all(m["finished_all"] for (w, _), m in med.items() if w in ("a", "b"))
