"""results.png: polls/s in (a) and bytes per waiting id in (c), by client (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clients import CLIENTS
from figures import Row, per_id


def draw(
    path: Path, med: dict[tuple[str, str], Row], names: list[str], meta: dict[str, Any]
) -> bool:
    """polls/s in (a) and bytes per waiting id in (c), by client; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    a = [c for c in names if ("a", c) in med]
    left.bar(a, [med["a", c]["polls_s"] for c in a], color="#4c72b0")
    left.set_title("(a) polls per second (higher is better)")
    sizes = [int(s) for s in str(meta["args"]["c_sizes"]).split(",") if s]
    width = 0.8 / max(1, len(sizes))
    for i, size in enumerate(sizes):
        cs = [c for c in names if per_id(med, size, c) is not None]
        for c in cs:
            x = names.index(c) + (i - (len(sizes) - 1) / 2) * width
            y = max(1.0, per_id(med, size, c) or 0.0)
            # Hatched: not every id was polled, so for a streaming client this is not verified.
            partial = CLIENTS[c].streams and med[f"c{size}", c]["polled"] < size
            right.bar(x, y, width, color=f"C{i}", hatch="//" if partial else None)
            right.annotate(f"{y:,.0f}", (x, y), ha="center", va="bottom", fontsize=8)
    right.set_yscale("log")
    right.set_xticks(range(len(names)), names)
    right.set_title("(c) bytes of RSS per waiting id (lower is better; log scale)")
    keys = [Patch(color=f"C{i}", label=f"{size:,} ids") for i, size in enumerate(sizes)]
    keys.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="unverified"))
    right.legend(handles=keys)
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(f"batchpoll and its peers, {meta['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
