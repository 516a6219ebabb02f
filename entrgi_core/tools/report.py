"""What the tools print and write: fixed-width tables, mean +- SEM over seeds, and one report
(``name.json``, ``name.txt``, ``name.png``) per run."""
from __future__ import annotations

import json
import math
from pathlib import Path


def mean_sem(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for fewer than two values; NaN mean for none)."""
    if not xs:
        return float("nan"), 0.0
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def pm(mean: float, sem: float | None = None) -> str:
    """``+0.123 +- 0.004``; the mean alone without a SEM; ``-`` for NaN."""
    if math.isnan(mean):
        return "-"
    return f"{mean:+.3f}" if sem is None else f"{mean:+.3f} +- {sem:.3f}"


def table(head: list[str], body: list[list[str]], *, align: str = "right") -> str:
    """A fixed-width table: the first column left-aligned, the others ``align``ed ("right" or
    "left"), a dashed rule under the header."""
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]

    def fmt(cells):
        parts = [c.rjust(w) if i and align == "right" else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(row) for row in body])


def figure(columns: int, *, width: float = 5.0, height: float = 4.4):
    """A matplotlib figure with ``columns`` panels side by side (headless backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(width * columns, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path: Path, title: str | None = None) -> None:
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, name: str, title: str, text: str, payload: dict, plot_to) -> None:
    """``name``.json (title + payload), ``name``.txt (title + table) and ``name``.png; prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"title": title, **payload}, indent=2))
    (out / f"{name}.txt").write_text(title + "\n" + text + "\n")
    plot_to(out / f"{name}.png")
    print(title)
    print(text)
    print(f"\nwritten: {out}/{name}.json, {name}.txt, {name}.png")
