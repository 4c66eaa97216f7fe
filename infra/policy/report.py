"""The compliance report: every control, what it checks, the evidence it judged, its result and the tests that
prove it."""
from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from infra.plan.cost import estimate
from infra.policy.rules import CONTROLS, ControlResult

if TYPE_CHECKING:
    from infra.plan.run import Plan

FORMATS = ("markdown", "html")
_IDENTITY = ("resource", "type", "region")


def _value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def _evidence_line(item: dict[str, Any]) -> tuple[str, str]:
    """(what was judged, the values judged)."""
    shown: tuple[str, ...]
    if "resource" in item:
        subject, shown = f"{item['resource']} ({item.get('type')}, {item.get('region')})", _IDENTITY
    else:
        subject, shown = "stack", ()
    values = "; ".join(f"{k}={_value(v)}" for k, v in item.items() if k not in shown)
    return subject, values


def _facts(plan: Plan, results: list[ControlResult], now: datetime) -> dict[str, Any]:
    cfg = plan.config
    cost = estimate(plan.resources, cfg.budget.monthly_usd)
    failing = [r for r in results if r.status == "fail" and r.enforcement == "mandatory"]
    return {
        "stack": plan.stack, "environment": cfg.environment, "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "regions": ", ".join(f"{r.name} ({r.residency})" for r in cfg.regions),
        "resources": len([r for r in plan.resources if not r.type.startswith("pulumi:providers:")]),
        "verdict": "BLOCKED: a mandatory control fails" if failing else "COMPLIANT: every mandatory control passes",
        "cost": cost, "budget": cfg.budget.monthly_usd,
    }


def _proofs(result: ControlResult) -> list[str]:
    control = next((c for c in CONTROLS if c.id == result.id), None)
    return control.proven_by if control else []


def _description(result: ControlResult) -> str:
    control = next((c for c in CONTROLS if c.id == result.id), None)
    return control.description if control else ""


def _markdown(plan: Plan, results: list[ControlResult], now: datetime) -> str:
    f = _facts(plan, results, now)
    cost = f["cost"]
    out = [f"# Compliance report: stack `{f['stack']}`", "",
           f"- Environment: {f['environment']}", f"- Date: {f['date']}", f"- Regions: {f['regions']}",
           f"- Resources judged: {f['resources']} (the program run offline under Pulumi's mock engine)",
           f"- Verdict: **{f['verdict']}**", "",
           "## Cost against budget", "",
           f"Estimated monthly cost: ${cost.monthly_usd_min:,.0f} at minimum scale, "
           f"${cost.monthly_usd_max:,.0f} at maximum scale; budget ${f['budget']:,.0f} "
           f"({cost.monthly_usd_max / f['budget']:.0%} of budget at maximum scale). "
           f"Prices from the instance catalog as of {cost.catalog_as_of}.", "",
           "| region | min USD/month | max USD/month |", "| --- | ---: | ---: |"]
    for region, amounts in sorted(cost.regions.items()):
        out.append(f"| {region} | {amounts['monthly_usd_min']:,.0f} | {amounts['monthly_usd_max']:,.0f} |")
    out += ["", "## Controls", "", "| control | title | enforcement | result |", "| --- | --- | --- | --- |"]
    for r in results:
        out.append(f"| `{r.id}` | {r.title} | {r.enforcement} | **{r.status.upper()}** |")
    for r in results:
        out += ["", f"### `{r.id}`: {r.title}", "", f"**Result: {r.status.upper()}** ({r.enforcement})", "",
                f"What it checks: {_description(r)}", ""]
        if r.violations:
            out += ["Violations:", ""] + [f"- {v}" for v in r.violations] + [""]
        out += [f"Evidence ({len(r.evidence)} items judged):", ""]
        for item in r.evidence:
            subject, values = _evidence_line(item)
            out.append(f"- {subject}: {values}".replace("|", "\\|"))
        out += ["", "Proven by:", ""] + [f"- `{t}`" for t in _proofs(r)]
    return "\n".join(out) + "\n"


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"
          ".pass{color:#176117;font-weight:bold}.fail{color:#a31515;font-weight:bold}"
          "code{background:#f4f4f4;padding:0 .2rem}li{margin:.15rem 0}")


def _html(plan: Plan, results: list[ControlResult], now: datetime) -> str:
    e = html.escape
    f = _facts(plan, results, now)
    cost = f["cost"]
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>Compliance report: {e(f['stack'])}</title><style>{_STYLE}</style></head><body>",
           f"<h1>Compliance report: stack <code>{e(f['stack'])}</code></h1><ul>",
           f"<li>Environment: {e(f['environment'])}</li><li>Date: {e(f['date'])}</li>",
           f"<li>Regions: {e(f['regions'])}</li>",
           f"<li>Resources judged: {f['resources']} (the program run offline under Pulumi's mock engine)</li>",
           f"<li>Verdict: <strong>{e(f['verdict'])}</strong></li></ul>",
           "<h2>Cost against budget</h2>",
           f"<p>Estimated monthly cost: ${cost.monthly_usd_min:,.0f} at minimum scale, "
           f"${cost.monthly_usd_max:,.0f} at maximum scale; budget ${f['budget']:,.0f} "
           f"({cost.monthly_usd_max / f['budget']:.0%} of budget at maximum scale). "
           f"Prices from the instance catalog as of {e(cost.catalog_as_of)}.</p>",
           "<table><tr><th>region</th><th>min USD/month</th><th>max USD/month</th></tr>"]
    for region, amounts in sorted(cost.regions.items()):
        out.append(f"<tr><td>{e(region)}</td><td>{amounts['monthly_usd_min']:,.0f}</td>"
                   f"<td>{amounts['monthly_usd_max']:,.0f}</td></tr>")
    out += ["</table>", "<h2>Controls</h2>",
            "<table><tr><th>control</th><th>title</th><th>enforcement</th><th>result</th></tr>"]
    for r in results:
        out.append(f"<tr><td><a href=\"#{e(r.id)}\"><code>{e(r.id)}</code></a></td><td>{e(r.title)}</td>"
                   f"<td>{e(r.enforcement)}</td><td class=\"{e(r.status)}\">{e(r.status.upper())}</td></tr>")
    out.append("</table>")
    for r in results:
        out += [f"<h3 id=\"{e(r.id)}\"><code>{e(r.id)}</code>: {e(r.title)}</h3>",
                f"<p>Result: <span class=\"{e(r.status)}\">{e(r.status.upper())}</span> ({e(r.enforcement)})</p>",
                f"<p>What it checks: {e(_description(r))}</p>"]
        if r.violations:
            out += ["<p>Violations:</p><ul>"] + [f"<li>{e(v)}</li>" for v in r.violations] + ["</ul>"]
        out.append(f"<details><summary>Evidence ({len(r.evidence)} items judged)</summary><ul>")
        for item in r.evidence:
            subject, values = _evidence_line(item)
            out.append(f"<li><strong>{e(subject)}</strong>: {e(values)}</li>")
        out += ["</ul></details>", "<p>Proven by:</p><ul>"] + [f"<li><code>{e(t)}</code></li>" for t in _proofs(r)]
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_report(plan: Plan, results: list[ControlResult], fmt: str = "markdown",
                  now: datetime | None = None) -> str:
    """The compliance report of `plan` given its control results, as Markdown or HTML."""
    now = now or datetime.now(UTC)
    if fmt == "markdown":
        return _markdown(plan, results, now)
    if fmt == "html":
        return _html(plan, results, now)
    raise ValueError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")
