"""The one way a step draws a picture: an off-screen matplotlib figure, laid out, saved, closed.

Every picture graftline logs next to its numbers (backbone leaderboard, confusion matrix, reliability
diagram, misclassified images, accuracy against latency, search history, domain gap, drift report) is
drawn inside `figure`. The Agg backend draws without a display (servers, tests, workers); closing the
figure once saved matters because pyplot keeps every open figure alive until it is closed, and a long
flow draws many.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def figure(path: Path, dpi: int, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """`(fig, axes)` from `plt.subplots(**subplots)` to draw on; when the block ends, the figure is laid
    out (`tight_layout`), saved to `path` (its folder created) at `dpi`, and closed.

    A block that raises saves nothing, and the figure is closed all the same."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
