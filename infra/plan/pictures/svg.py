"""The few SVG primitives the plan's pictures are drawn with: escaped text, boxes, lines, fixed-precision numbers.

Plain string building, no library: the pictures need a dozen element kinds, and writing them here keeps the output
byte-for-byte stable (attribute order, number format) so a committed picture can be compared with a fresh one.
"""
from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"
# Monospace glyphs are 0.6 em wide in DejaVu Sans Mono (and close to it in Menlo, Consolas): box widths are
# computed from character counts, so no font metrics are needed to lay text out.
CHAR_EM = 0.6


def num(value: float) -> str:
    """A coordinate with at most one decimal, no trailing zeros: the same plan always prints the same digits."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def text_width(text: str, size: float) -> float:
    return len(text) * size * CHAR_EM


def attrs(**values: str | float) -> str:
    out = []
    for key, value in values.items():
        shown = num(value) if isinstance(value, (int, float)) else value
        out.append(f"{key.rstrip('_').replace('_', '-')}={quoteattr(shown)}")
    return " ".join(out)


def rect(x: float, y: float, w: float, h: float, fill: str, stroke: str = "none", rx: float = 0,
         dash: str = "") -> str:
    extra = {"stroke_dasharray": dash} if dash else {}
    return f"<rect {attrs(x=x, y=y, width=w, height=h, rx=rx, fill=fill, stroke=stroke, **extra)}/>"


def text(x: float, y: float, content: str, size: float = 12, weight: str = "normal", fill: str = "#1f2328",
         anchor: str = "start") -> str:
    return (f"<text {attrs(x=x, y=y, font_size=size, font_weight=weight, fill=fill, text_anchor=anchor)}>"
            f"{escape(content)}</text>")


def _stroke(dash: str, arrows: str) -> dict[str, str | float]:
    """A dash pattern, and the arrow marker at the "start", "end" or both of a line or path."""
    extra: dict[str, str | float] = {"stroke_dasharray": dash} if dash else {}
    if "end" in arrows:
        extra["marker_end"] = "url(#llmp-arrow)"
    if "start" in arrows:
        extra["marker_start"] = "url(#llmp-arrow)"
    return extra


def line(x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1, dash: str = "",
         arrows: str = "") -> str:
    extra = _stroke(dash, arrows)
    return f"<line {attrs(x1=x1, y1=y1, x2=x2, y2=y2, stroke=stroke, stroke_width=width, **extra)}/>"


def path(points: list[tuple[float, float]], stroke: str, width: float = 1, dash: str = "",
         arrows: str = "") -> str:
    """A polyline through `points`; `arrows` "start", "end" or both put the arrow marker there."""
    extra = _stroke(dash, arrows)
    d = "M" + "L".join(f"{num(x)},{num(y)}" for x, y in points)
    return f"<path {attrs(d=d, fill='none', stroke=stroke, stroke_width=width, **extra)}/>"


def document(width: float, height: float, title: str, body: list[str], arrows: bool = False) -> str:
    """A standalone SVG: its own namespace (so browsers, GitHub and xml.etree read it alone), a title for screen
    readers, and (`arrows`) the arrow marker `line` refers to: one picture per page carries it, as ids are page-wide."""
    head = (f"<svg xmlns=\"http://www.w3.org/2000/svg\" {attrs(width=width, height=height)} "
            f"viewBox=\"0 0 {num(width)} {num(height)}\" font-family={quoteattr(FONT)}>")
    defs = ("<defs><marker id=\"llmp-arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" "
            "markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" fill=\"#57606a\"/>"
            "</marker></defs>")
    return "\n".join([head, f"<title>{escape(title)}</title>", *([defs] if arrows else []),
                      rect(0, 0, width, height, "#ffffff"), *body, "</svg>"]) + "\n"
