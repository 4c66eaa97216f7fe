"""Renders a plan for people (a rich table, Markdown for PR comments) and for machines (JSON)."""
from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from infra.plan.cost import CostEstimate
from infra.plan.quotas import quota_needs
from infra.plan.run import Plan
from infra.plan.summary import RegionSummary, store_line


class ControlResult(Protocol):
    id: str
    status: str
    enforcement: str
    violations: list[str]

    def as_json(self) -> dict[str, Any]: ...


RESERVED_NOTE = ("Reserved pools are priced at the catalog's on-demand rate: an ODCR bills it whether or not "
                 "instances run; a Capacity Block is paid up front at the fee quoted when it is bought.")


def usd(amount: float) -> str:
    return f"${amount:,.0f}"


def to_json(plan: Plan, regions: list[RegionSummary], cost: CostEstimate, results: Sequence[ControlResult]) -> str:
    doc = {
        "stack": plan.stack,
        "environment": plan.config.environment,
        "regions": [r.as_json() for r in regions],
        "resources": [r.as_json() for r in plan.resources],
        "cost": cost.as_json(),
        "quotas": [q.as_json() for q in quota_needs(plan.resources)],
        "policies": [r.as_json() for r in results],
    }
    return json.dumps(doc, indent=2, default=str)


def to_markdown(plan: Plan, regions: list[RegionSummary], cost: CostEstimate, results: Sequence[ControlResult]) -> str:
    failed = [r for r in results if r.status == "fail"]
    lines = [
        f"### llm-platform plan: `{plan.stack}`",
        "",
        f"{len(plan.resources)} resources in {len(regions)} region(s). "
        f"Estimated monthly cost {usd(cost.monthly_usd_min)} (min scale) to {usd(cost.monthly_usd_max)} "
        f"(max scale), budget {usd(cost.budget_usd)}; prices as of {cost.catalog_as_of}.",
        "",
        "| region | zone | pool | capacity | instance types | nodes | models (replicas) | monthly (min–max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for region in regions:
        for pool in region.pools:
            models = ", ".join(f"{m.model} ({m.replicas()})"
                               for m in region.models if m.pool == pool["name"]) or "–"
            lines.append(f"| {region.name} | {region.residency} | {pool['name']} | {pool['capacity']} | "
                         f"{', '.join(pool['instance_types'])} | {pool['min_nodes']}–{pool['max_nodes']} | "
                         f"{models} | {usd(pool['monthly_usd_min'])}–{usd(pool['monthly_usd_max'])} |")
        lines.append(f"| **{region.name}** | | | | | | | **{usd(region.monthly_usd_min)}–"
                     f"{usd(region.monthly_usd_max)}** |")
    for region in regions:
        if region.addons or region.elastic:
            lines += ["", f"**{region.name}** add-ons: "
                      + ", ".join(f"{n} {v}" for n, v in sorted(region.addons.items()))
                      + "".join(f"; {e}" for e in region.elastic)]
        if region.stores:
            lines += ["", f"**{region.name}** gateway stores:"] + [f"- {store_line(st)}" for st in region.stores]
    if any(p.capacity == "reserved" for p in cost.pools):
        lines += ["", RESERVED_NOTE]
    lines += ["", "EC2 vCPU quotas needed at max scale (request them before `pulumi up`):", "",
              "| region | quota | code | vCPUs | node groups |", "|---|---|---|---|---|"]
    for q in quota_needs(plan.resources):
        lines.append(f"| {q.region} | {q.name} | `{q.code}` | {q.vcpus} | {', '.join(q.node_groups)} |")
    lines += ["", "| control | enforcement | result |", "|---|---|---|"]
    for r in results:
        mark = "pass" if r.status == "pass" else "**FAIL**"
        lines.append(f"| `{r.id}` | {r.enforcement} | {mark} |")
    for r in failed:
        lines += ["", f"**`{r.id}` violations:**"] + [f"- {v}" for v in r.violations]
    return "\n".join(lines) + "\n"


def to_table(plan: Plan, regions: list[RegionSummary], cost: CostEstimate, results: Sequence[ControlResult],
             width: int | None = None) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width or 140, force_terminal=False, highlight=False)
    console.print(f"[bold]llm-platform plan[/bold] · stack [bold]{plan.stack}[/bold] "
                  f"({plan.config.environment}) · {len(plan.resources)} resources · prices as of {cost.catalog_as_of}")
    for region in regions:
        table = Table(title=f"{region.name} · zone {region.residency} · "
                            f"{usd(region.monthly_usd_min)}–{usd(region.monthly_usd_max)}/month",
                      title_justify="left", expand=False)
        for col in ("pool", "capacity", "instance types", "nodes", "max GPUs", "models (replicas min–max)"):
            table.add_column(col)
        for pool in region.pools:
            models = "\n".join(f"{m.model} ×{m.min_replicas}–{m.max_replicas} ({m.gpus} GPU"
                               + (f"; {m.capped})" if m.capped else ")")
                               for m in region.models if m.pool == pool["name"]) or "–"
            table.add_row(pool["name"], pool["capacity"], ", ".join(pool["instance_types"]),
                          f"{pool['min_nodes']}–{pool['max_nodes']}"
                          + (" (Karpenter)" if pool.get("autoscaler") == "karpenter" else "")
                          + f"\n{usd(pool['monthly_usd_min'])}–{usd(pool['monthly_usd_max'])}/month",
                          str(pool["gpus_max"]), models)
        console.print(table)
        if region.addons:
            console.print("add-ons: " + ", ".join(f"{n} {v}" for n, v in sorted(region.addons.items())))
        for line in region.elastic:
            console.print(line)
        for store in region.stores:
            console.print(f"gateway {store_line(store)}")
    share = cost.monthly_usd_max / cost.budget_usd * 100 if cost.budget_usd else 0
    console.print(f"[bold]Cost[/bold]: {usd(cost.monthly_usd_min)} at min scale, {usd(cost.monthly_usd_max)} at "
                  f"max scale; budget {usd(cost.budget_usd)} (max scale uses {share:.0f}% of it)")
    if any(p.capacity == "reserved" for p in cost.pools):
        console.print(RESERVED_NOTE)
    quotas = Table(title="EC2 vCPU quotas needed at max scale (request before `pulumi up`)", title_justify="left")
    for col in ("region", "quota", "code", "vCPUs", "node groups"):
        quotas.add_column(col)
    for q in quota_needs(plan.resources):
        quotas.add_row(q.region, q.name, q.code, str(q.vcpus), ", ".join(q.node_groups))
    console.print(quotas)
    counts = Counter(r.type.split(":")[0] + ":" + r.type.rsplit(":", 1)[-1] for r in plan.resources)
    console.print("[bold]Resources[/bold]: " + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())))
    policy = Table(title="Policy controls", title_justify="left")
    for col in ("control", "enforcement", "result", "violations"):
        policy.add_column(col)
    for r in results:
        status = "[green]pass[/green]" if r.status == "pass" else "[red]FAIL[/red]"
        policy.add_row(r.id, r.enforcement, status, "\n".join(r.violations) or "–")
    console.print(policy)
    return out.getvalue()


def to_html(plan: Plan, regions: list[RegionSummary], cost: CostEstimate, results: Sequence[ControlResult]) -> str:
    """The plan as one HTML page: the topology and cost pictures inline, then the pools and the controls."""
    from html import escape as e

    from infra.policy.report import STYLE, pictures

    drawn = pictures(plan, cost)  # the compliance report's very pictures and style: one drawing, one look
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>llm-platform plan: {e(plan.stack)}</title><style>{STYLE}</style></head><body>",
           f"<h1>llm-platform plan: <code>{e(plan.stack)}</code></h1>",
           f"<p>{len(plan.resources)} resources in {len(regions)} region(s). Estimated monthly cost "
           f"{usd(cost.monthly_usd_min)} (min scale) to {usd(cost.monthly_usd_max)} (max scale), budget "
           f"{usd(cost.budget_usd)}; prices as of {e(cost.catalog_as_of)}.</p>",
           f"<figure id=\"topology\">{drawn.topology}</figure>", f"<figure id=\"cost\">{drawn.cost}</figure>",
           "<table><tr><th>region</th><th>zone</th><th>pool</th><th>capacity</th><th>instance types</th>"
           "<th>nodes</th><th>models (replicas)</th><th>monthly (min–max)</th></tr>"]
    for region in regions:
        for pool in region.pools:
            models = ", ".join(f"{m.model} ({m.replicas()})" for m in region.models if m.pool == pool["name"]) or "–"
            out.append(f"<tr><td>{e(region.name)}</td><td>{e(region.residency)}</td><td>{e(pool['name'])}</td>"
                       f"<td>{e(pool['capacity'])}</td><td>{e(', '.join(pool['instance_types']))}</td>"
                       f"<td>{pool['min_nodes']}–{pool['max_nodes']}</td><td>{e(models)}</td>"
                       f"<td>{usd(pool['monthly_usd_min'])}–{usd(pool['monthly_usd_max'])}</td></tr>")
    out += ["</table>", "<h2>Policy controls</h2>", "<table><tr><th>control</th><th>enforcement</th><th>result</th>"
            "<th>violations</th></tr>"]
    for r in results:
        out.append(f"<tr><td><code>{e(r.id)}</code></td><td>{e(r.enforcement)}</td><td class=\"{e(r.status)}\">"
                   f"{e(r.status)}</td><td>{'<br>'.join(e(v) for v in r.violations) or '–'}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"
