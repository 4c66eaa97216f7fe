"""The compliance report: the verdict, pictures of the topology and of cost against budget, the provenance, then
every control: what it checks, the evidence it judged, its result and the tests that prove it (and, when they were
run, whether they passed)."""
from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from infra.plan.cost import CostEstimate, estimate
from infra.plan.pictures.cost_chart import cost_svg
from infra.plan.pictures.facts import read_topology
from infra.plan.pictures.topology import topology_svg
from infra.policy.proof_run import PASSED
from infra.policy.provenance import Provenance, collect
from infra.policy.rules import CONTROLS, MANDATORY, ControlResult

if TYPE_CHECKING:
    from infra.plan.run import Plan

FORMATS = ("markdown", "html")
_IDENTITY = ("resource", "type", "region")
PICTURES = ("topology", "cost")


@dataclass(frozen=True)
class Pictures:
    """The report's pictures as SVG text: the recorded topology, and cost against budget."""
    topology: str
    cost: str

    def named(self) -> dict[str, str]:
        return {"topology": self.topology, "cost": self.cost}


def pictures(plan: Plan, cost: CostEstimate | None = None) -> Pictures:
    cost = cost or estimate(plan.resources, plan.config.budget.monthly_usd)
    return Pictures(topology_svg(read_topology(plan.stack, plan.resources, cost.pools)), cost_svg(cost, plan.stack))


def picture_file(report_name: str, picture: str) -> str:
    """The file a Markdown report's picture is written to, beside it: report.md -> report-topology.svg."""
    stem = report_name.rsplit(".", 1)[0] if "." in report_name else report_name
    return f"{stem}-{picture}.svg"


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


def _proofs(result: ControlResult) -> list[str]:
    control = next((c for c in CONTROLS if c.id == result.id), None)
    return control.proven_by if control else []


def _description(result: ControlResult) -> str:
    control = next((c for c in CONTROLS if c.id == result.id), None)
    return control.description if control else ""


@dataclass(frozen=True)
class Facts:
    stack: str
    environment: str
    date: str
    regions: str
    resources: int
    verdict: str
    red: bool
    cost: CostEstimate
    budget: float
    provenance: Provenance


def verdict(results: list[ControlResult], proofs: Mapping[str, str] | None) -> tuple[str, bool]:
    """(the verdict, whether it is red): red when a mandatory control fails or a test proving one did not pass."""
    failing = [r.id for r in results if r.status == "fail" and r.enforcement == MANDATORY]
    unproven = sorted({t for r in results for t in _proofs(r) if proofs is not None and proofs.get(t) != PASSED})
    if failing:
        return f"BLOCKED: a mandatory control fails ({', '.join(failing)})", True
    if unproven:
        return f"BLOCKED: {len(unproven)} test(s) proving the controls did not pass in this run", True
    if proofs is not None:
        return "COMPLIANT: every mandatory control passes and every test proving them passed in this run", False
    return "COMPLIANT: every mandatory control passes", False


def _facts(plan: Plan, results: list[ControlResult], now: datetime, proofs: Mapping[str, str] | None,
           provenance: Provenance | None) -> Facts:
    cfg = plan.config
    cost = estimate(plan.resources, cfg.budget.monthly_usd)
    text, red = verdict(results, proofs)
    return Facts(
        stack=plan.stack, environment=cfg.environment, date=now.strftime("%Y-%m-%d %H:%M UTC"),
        regions=", ".join(f"{r.name} ({r.residency})" for r in cfg.regions),
        resources=len([r for r in plan.resources if not r.type.startswith("pulumi:providers:")]),
        verdict=text, red=red, cost=cost, budget=cfg.budget.monthly_usd,
        provenance=provenance or collect(plan.stack, cost.catalog_as_of, now))


def _cost_sentence(f: Facts) -> str:
    cost = f.cost
    return (f"Estimated monthly cost: ${cost.monthly_usd_min:,.0f} at minimum scale, "
            f"${cost.monthly_usd_max:,.0f} at maximum scale; budget ${f.budget:,.0f} "
            f"({cost.monthly_usd_max / f.budget:.0%} of budget at maximum scale). "
            f"Prices from the instance catalog as of {cost.catalog_as_of}.")


def _proof_mark(test: str, proofs: Mapping[str, str] | None) -> str:
    return "" if proofs is None else f" ({proofs.get(test, 'not run')})"


def _proof_summary(result: ControlResult, proofs: Mapping[str, str] | None) -> str:
    tests = _proofs(result)
    if proofs is None:
        return f"{len(tests)} named (not run: --with-tests)"
    return f"{sum(proofs.get(t) == PASSED for t in tests)}/{len(tests)} passed"


def _markdown(plan: Plan, results: list[ControlResult], now: datetime, proofs: Mapping[str, str] | None,
              provenance: Provenance | None, picture_files: Mapping[str, str] | None) -> str:
    f = _facts(plan, results, now, proofs, provenance)
    out = [f"# Compliance report: stack `{f.stack}`", "",
           f"- Environment: {f.environment}", f"- Date: {f.date}", f"- Regions: {f.regions}",
           f"- Resources judged: {f.resources} (the program run offline under Pulumi's mock engine)",
           f"- Verdict: **{f.verdict}**", "", "## Topology", ""]
    # GitHub strips inline <svg> from Markdown but shows an image file the Markdown links to
    # (https://docs.github.com/en/get-started/writing-on-github/getting-started-with-writing-and-formatting-on-github/basic-writing-and-formatting-syntax#images).
    if picture_files:
        out += [f"![Topology of stack {f.stack}]({picture_files['topology']})", ""]
    else:
        out += ["The pictures are written beside the report: run `llmp report --output FILE`.", ""]
    out += ["## Cost against budget", ""]
    if picture_files:
        out += [f"![Monthly cost of stack {f.stack} against its budget]({picture_files['cost']})", ""]
    out += [_cost_sentence(f), "", "| region | min USD/month | max USD/month |", "| --- | ---: | ---: |"]
    for region, amounts in sorted(f.cost.regions.items()):
        out.append(f"| {region} | {amounts['monthly_usd_min']:,.0f} | {amounts['monthly_usd_max']:,.0f} |")
    out += ["", "## Provenance", "", "| | |", "| --- | --- |"]
    out += [f"| {k} | `{v}` |" for k, v in f.provenance.rows()]
    out += ["", "## Controls", "", "| control | title | enforcement | result | proof tests |",
            "| --- | --- | --- | --- | --- |"]
    for r in results:
        out.append(f"| `{r.id}` | {r.title} | {r.enforcement} | **{r.status.upper()}** | "
                   f"{_proof_summary(r, proofs)} |")
    for r in results:
        out += ["", f"### `{r.id}`: {r.title}", "", f"**Result: {r.status.upper()}** ({r.enforcement})", "",
                f"What it checks: {_description(r)}", ""]
        if r.violations:
            out += ["Violations:", ""] + [f"- {v}" for v in r.violations] + [""]
        out += [f"Evidence ({len(r.evidence)} items judged):", ""]
        for item in r.evidence:
            subject, values = _evidence_line(item)
            out.append(f"- {subject}: {values}".replace("|", "\\|"))
        out += ["", "Proven by:", ""] + [f"- `{t}`{_proof_mark(t, proofs)}" for t in _proofs(r)]
    return "\n".join(out) + "\n"


# One style sheet for every HTML page of the project (this report, `llmp plan --format html`).
STYLE = ("body{font-family:system-ui,sans-serif;max-width:84rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"
          ".pass,.passed{color:#176117;font-weight:bold}.fail,.failed{color:#a31515;font-weight:bold}"
          ".verdict-red{background:#ffebe9;border:2px solid #a31515;padding:.5rem}"
          ".verdict-green{background:#dafbe1;border:2px solid #176117;padding:.5rem}"
          "figure{margin:1rem 0}svg{max-width:100%;height:auto}"
          "code{background:#f4f4f4;padding:0 .2rem}li{margin:.15rem 0}"
          "@media print{body{max-width:none;margin:0}figure,tr,li{break-inside:avoid}}")


def _html(plan: Plan, results: list[ControlResult], now: datetime, proofs: Mapping[str, str] | None,
          provenance: Provenance | None) -> str:
    e = html.escape
    f = _facts(plan, results, now, proofs, provenance)
    drawn = pictures(plan, f.cost)
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>Compliance report: {e(f.stack)}</title><style>{STYLE}</style></head><body>",
           f"<h1>Compliance report: stack <code>{e(f.stack)}</code></h1><ul>",
           f"<li>Environment: {e(f.environment)}</li><li>Date: {e(f.date)}</li>",
           f"<li>Regions: {e(f.regions)}</li>",
           f"<li>Resources judged: {f.resources} (the program run offline under Pulumi's mock engine)</li></ul>",
           f"<p class=\"verdict-{'red' if f.red else 'green'}\">Verdict: <strong>{e(f.verdict)}</strong></p>",
           "<h2>Topology</h2>", f"<figure id=\"topology\">{drawn.topology}</figure>",
           "<h2>Cost against budget</h2>", f"<figure id=\"cost\">{drawn.cost}</figure>",
           f"<p>{e(_cost_sentence(f))}</p>",
           "<table><tr><th>region</th><th>min USD/month</th><th>max USD/month</th></tr>"]
    for region, amounts in sorted(f.cost.regions.items()):
        out.append(f"<tr><td>{e(region)}</td><td>{amounts['monthly_usd_min']:,.0f}</td>"
                   f"<td>{amounts['monthly_usd_max']:,.0f}</td></tr>")
    out += ["</table>", "<h2>Provenance</h2>", "<table id=\"provenance\">"]
    out += [f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in f.provenance.rows()]
    out += ["</table>", "<h2>Controls</h2>", "<table><tr><th>control</th><th>title</th><th>enforcement</th>"
            "<th>result</th><th>proof tests</th></tr>"]
    for r in results:
        out.append(f"<tr><td><a href=\"#{e(r.id)}\"><code>{e(r.id)}</code></a></td><td>{e(r.title)}</td>"
                   f"<td>{e(r.enforcement)}</td><td class=\"{e(r.status)}\">{e(r.status.upper())}</td>"
                   f"<td>{e(_proof_summary(r, proofs))}</td></tr>")
    out.append("</table>")
    for r in results:
        out += [f"<h3 id=\"{e(r.id)}\"><code>{e(r.id)}</code>: {e(r.title)}</h3>",
                f"<p>Result: <span class=\"{e(r.status)}\">{e(r.status.upper())}</span> ({e(r.enforcement)})</p>",
                f"<p>What it checks: {e(_description(r))}</p>"]
        if r.violations:
            out += ["<p>Violations:</p><ul>"] + [f"<li>{e(v)}</li>" for v in r.violations] + ["</ul>"]
        # Open, so printing or saving as PDF shows the evidence: a closed <details> prints as its summary only.
        out.append(f"<details open><summary>Evidence ({len(r.evidence)} items judged)</summary><ul>")
        for item in r.evidence:
            subject, values = _evidence_line(item)
            out.append(f"<li><strong>{e(subject)}</strong>: {e(values)}</li>")
        out += ["</ul></details>", "<p>Proven by:</p><ul>"]
        for t in _proofs(r):
            outcome = "" if proofs is None else proofs.get(t, "not run")
            mark = f" <span class=\"{e(outcome)}\">{e(outcome)}</span>" if outcome else ""
            out.append(f"<li><code>{e(t)}</code>{mark}</li>")
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_report(plan: Plan, results: list[ControlResult], fmt: str = "markdown", now: datetime | None = None,
                  *, proofs: Mapping[str, str] | None = None, provenance: Provenance | None = None,
                  picture_files: Mapping[str, str] | None = None) -> str:
    """The compliance report of `plan` given its control results, as Markdown or HTML. `proofs` (test id ->
    outcome, from infra.policy.proof_run) marks each proof test; `picture_files` (picture -> file name) are the
    SVG files a Markdown report links to (HTML carries its pictures inline)."""
    now = now or datetime.now(UTC)
    if fmt == "markdown":
        return _markdown(plan, results, now, proofs, provenance, picture_files)
    if fmt == "html":
        return _html(plan, results, now, proofs, provenance)
    raise ValueError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")

