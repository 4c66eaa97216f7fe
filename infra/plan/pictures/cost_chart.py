"""The cost chart: the stack's, each region's and each pool's monthly cost at minimum and maximum scale, as bars
on one scale against the stack's budget line, as one SVG."""
from __future__ import annotations

from dataclasses import dataclass

from infra.plan.cost import CostEstimate
from infra.plan.pictures.svg import document, line, rect, text, text_width

# Fills a reader (and tests/infra/test_pictures.py, in a screenshot) tells apart.
MIN_FILL, MAX_FILL, BUDGET_STROKE = "#1a7f37", "#f9b26c", "#cf222e"
SIZE, ROW, BAR, MARGIN, PLOT = 12.0, 22.0, 14.0, 20.0, 560.0


@dataclass(frozen=True)
class Row:
    label: str
    low: float
    high: float
    bold: bool = False
    indent: bool = False  # a pool under its region (SVG collapses leading spaces, so it is moved right)


def _usd(amount: float) -> str:
    return f"${amount:,.0f}"


def cost_rows(cost: CostEstimate) -> list[Row]:
    """The stack, then each region (with its fixed costs: control plane, NAT, volumes) followed by its pools."""
    rows = [Row("stack total", cost.monthly_usd_min, cost.monthly_usd_max, bold=True)]
    for region, amounts in sorted(cost.regions.items()):
        rows.append(Row(region, amounts["monthly_usd_min"], amounts["monthly_usd_max"], bold=True))
        for p in sorted((p for p in cost.pools if p.region == region), key=lambda p: p.pool):
            rows.append(Row(f"{p.pool} ({p.capacity})", p.monthly_usd_min, p.monthly_usd_max, indent=True))
    return rows


def cost_svg(cost: CostEstimate, stack: str) -> str:
    """Bars of each row's min (dark) and max (light) monthly cost, the budget as a vertical line."""
    rows = cost_rows(cost)
    label_w = max(text_width(r.label, SIZE) + (14 if r.indent else 0) for r in rows) + 16
    value_w = max(text_width(f"{_usd(r.low)} - {_usd(r.high)}", SIZE) for r in rows) + 16
    top = MARGIN + 2 * ROW + 8
    scale = max(cost.budget_usd, cost.monthly_usd_max, 1.0) * 1.05
    x0 = MARGIN + label_w

    def x(amount: float) -> float:
        return x0 + PLOT * amount / scale

    title = (f"llm-platform stack {stack}: monthly cost at min and max scale against the budget "
             f"(prices as of {cost.catalog_as_of})")
    body = [text(MARGIN, MARGIN + 14, title, 14, "bold"),
            rect(MARGIN, MARGIN + ROW + 2, 12, 10, MIN_FILL), text(MARGIN + 16, MARGIN + ROW + 11, "min scale"),
            rect(MARGIN + 110, MARGIN + ROW + 2, 12, 10, MAX_FILL),
            text(MARGIN + 126, MARGIN + ROW + 11, "max scale")]
    for i, r in enumerate(rows):
        y = top + i * ROW
        weight = "bold" if r.bold else "normal"
        body.append(text(MARGIN + (14 if r.indent else 0), y + BAR - 2, r.label, SIZE, weight))
        body.append(rect(x0, y, max(x(r.high) - x0, 1), BAR, MAX_FILL))
        body.append(rect(x0, y, max(x(r.low) - x0, 0), BAR, MIN_FILL))
        body.append(text(x0 + PLOT + 8, y + BAR - 2, f"{_usd(r.low)} - {_usd(r.high)}", SIZE, weight))
    bottom = top + len(rows) * ROW
    bx = x(cost.budget_usd)
    body.append(line(bx, top - 6, bx, bottom, BUDGET_STROKE, 2, dash="6 3"))
    body.append(text(bx, bottom + 16, f"budget {_usd(cost.budget_usd)}", SIZE, "bold", BUDGET_STROKE, "middle"))
    width = max(x0 + PLOT + value_w, MARGIN + text_width(title, 14)) + MARGIN
    return document(width, bottom + 24 + MARGIN, f"Monthly cost of stack {stack} against its budget", body)
