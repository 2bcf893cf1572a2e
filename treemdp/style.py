"""One figure style for every figure module: resolution, palettes, the figure, its footer, saving.

The toy figures (:mod:`treemdp.figures`), the phenomena (:mod:`treemdp.phenomena.figures`) and the
lab (:mod:`treemdp.lab.figures`) draw only their data; what every figure shares is here::

    fig = figure((13, 7))                  # inches, at DPI, laid out by matplotlib
    ...                                    # the data
    footer(fig, "GRU hidden 32; Adam ...") # the settings line under the axes
    save(fig, out / "fig07_mass_summary")  # PNG (exactly width*DPI x height*DPI) + PDF

PDFs carry no creation date, so the same data give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

from .plots import pyplot

#: Dots per inch of every PNG.
DPI = 100
#: One colour per beta (or per group drawn in beta's place), in order.
BETA_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e")
#: The paper's three losses.
LOSS_COLORS = {"dpo": "#1f77b4", "ipo": "#d62728", "slic": "#2ca02c"}
#: One colour per dataset size N (the lab).
N_COLORS = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854")
#: The settings line under a figure.
FOOTER = dict(fontsize=8, color="0.3")


def figure(size: tuple[float, float], *, fixed_margins: bool = False):
    """A figure of ``size`` inches at :data:`DPI`.

    By default matplotlib's constrained layout places the axes; ``fixed_margins`` sets fixed
    margins instead (a layout engine costs seconds per figure of many panels, as in the lab's).
    """
    if not fixed_margins:
        return pyplot().figure(figsize=size, dpi=DPI, layout="constrained")
    fig = pyplot().figure(figsize=size, dpi=DPI)
    width, height = size
    fig.subplots_adjust(left=0.85 / width, right=1 - 0.25 / width, bottom=1.05 / height, top=1 - 0.75 / height,
                        wspace=0.28, hspace=0.3)
    return fig


def footer(fig, text: str) -> None:
    """The settings line under a figure: placed by the layout engine (never over the axes), or,
    for a figure of fixed margins, at the bottom edge in a slightly smaller font."""
    if fig.get_layout_engine() is not None:
        fig.supxlabel(text, **FOOTER)
    else:
        fig.text(0.5, 0.012, text, ha="center", va="bottom", fontsize=7.5, color=FOOTER["color"])


def save(fig, out: str | Path) -> Path:
    """Save as PNG (exactly the figure's size in pixels) and PDF; returns the PNG path."""
    out = Path(out)
    stem = out.parent / (out.name[:-4] if out.name.endswith((".png", ".pdf")) else out.name)
    out = stem.parent / (stem.name + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    fig.savefig(stem.parent / (stem.name + ".pdf"), metadata={"CreationDate": None})  # reproducible bytes
    pyplot().close(fig)
    return out


__all__ = ["DPI", "BETA_COLORS", "LOSS_COLORS", "N_COLORS", "FOOTER", "figure", "footer", "save"]
