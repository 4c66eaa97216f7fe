"""The compliance report a reviewer reads: each control, what it checks, its evidence, its result, the tests
proving it."""
from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest

from infra.policy.report import render_report
from infra.policy.rules import CONTROLS, evaluate
from tests.policy.helpers import find, mutated, result_of_resources

WHEN = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


def test_markdown_report_shows_every_control_its_evidence_result_and_proof(prod_plan):
    report = render_report(prod_plan, evaluate(prod_plan), "markdown", now=WHEN)
    assert report.startswith("# Compliance report: stack `prod`")
    assert "- Date: 2026-11-23 09:30 UTC" in report
    assert "**COMPLIANT: every mandatory control passes**" in report
    assert "budget $500,000" in report and "at maximum scale" in report
    for control in CONTROLS:
        assert f"### `{control.id}`: {control.title}" in report
        assert f"What it checks: {control.description}" in report
        for test in control.proven_by:
            assert f"- `{test}`" in report
    assert report.count("**Result: PASS** (mandatory)") == len(CONTROLS)
    assert "- eu-north-1-mistral-small-24b" not in report  # evidence is summarized per judgment, not dumped raw
    assert "model=mistral-small-24b; restricted_to=eu; served_in=[\"eu-north-1\", \"eu-west-2\"]" in report


def test_report_of_a_blocked_stack_lists_the_violations(prod_plan):
    resources = mutated(prod_plan, lambda rs: rs.remove(find(rs, "aws:budgets/budget:Budget")))
    results = [result_of_resources(prod_plan, resources, c.id) for c in CONTROLS]
    report = render_report(prod_plan, results, "markdown", now=WHEN)
    assert "**BLOCKED: a mandatory control fails**" in report
    assert "| `budget-cap` | Spend is capped by a budget the stack cannot outgrow | mandatory | **FAIL** |" in report
    assert "- no AWS Budgets budget covers stack prod" in report


def test_html_report_is_well_formed_and_escaped(preview_plan):
    report = render_report(preview_plan, evaluate(preview_plan), "html", now=WHEN)

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.open: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "br"):
                self.open.append(tag)

        def handle_endtag(self, tag):
            assert self.open.pop() == tag

    parser = Tags()
    parser.feed(report)
    assert parser.open == []
    assert "<h1>Compliance report: stack <code>preview</code></h1>" in report
    assert report.count('<span class="pass">PASS</span>') == len(CONTROLS)
    assert "user:llm-platform:stack$&lt;stack&gt;" in report  # the description's <stack> is escaped


def test_unknown_report_format_is_refused(preview_plan):
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        render_report(preview_plan, evaluate(preview_plan), "pdf")
