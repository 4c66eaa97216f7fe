"""The compliance report a reviewer reads: each control, what it checks, its evidence, its result, the tests
proving it."""
from __future__ import annotations

import platform
import re
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from html.parser import HTMLParser
from importlib.metadata import version

import pytest

from infra.cli import EXIT_OK, EXIT_POLICY, main
from infra.config import ROOT
from infra.policy.proof_run import FAILED, NOT_RUN, PASSED, SKIPPED, outcomes, run_proofs
from infra.policy.provenance import collect
from infra.policy.report import render_report, verdict
from infra.policy.rules import CONTROLS, evaluate
from tests.policy.helpers import find, mutated, result_of_resources
from tests.stacks import stack_raw, write_stack

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
    assert "**BLOCKED: a mandatory control fails (budget-cap)**" in report
    named = len(next(c for c in CONTROLS if c.id == "budget-cap").proven_by)
    assert ("| `budget-cap` | Spend is capped by a budget the stack cannot outgrow | mandatory | **FAIL** | "
            f"{named} named (not run: --with-tests) |") in report
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


def _all_proofs(outcome: str) -> dict[str, str]:
    return {t: outcome for c in CONTROLS for t in c.proven_by}


def test_html_report_carries_the_topology_and_cost_pictures_inline(prod_plan):
    report = render_report(prod_plan, evaluate(prod_plan), "html", now=WHEN)
    figures = re.findall(r'<figure id="(\w+)">(<svg .*?</svg>)\s*</figure>', report, re.S)
    assert [name for name, _ in figures] == ["topology", "cost"]
    topology, cost = (ET.fromstring(svg) for _, svg in figures)
    words = " ".join(t.text or "" for t in topology.iter("{http://www.w3.org/2000/svg}text"))
    assert "residency zone eu" in words and "eu-west-2" in words and "api.llm.example.com" in words
    assert "budget $500,000" in [t.text for t in cost.iter("{http://www.w3.org/2000/svg}text")]
    assert report.index('id="topology"') < report.index('id="cost"') < report.index("<h2>Controls</h2>")


def test_html_report_states_its_provenance(prod_plan):
    report = render_report(prod_plan, evaluate(prod_plan), "html", now=WHEN)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    block = report[report.index('<table id="provenance">'):]
    block = block[:block.index("</table>")]
    assert f"<tr><th>commit</th><td><code>{head.stdout.strip()}</code></td></tr>" in block
    assert re.search(r"<tr><th>uncommitted changes</th><td><code>(no|yes: uncommitted changes)</code>", block)
    assert "<tr><th>stack</th><td><code>prod</code></td></tr>" in block
    assert "<tr><th>instance catalog as of</th><td><code>2026-" in block
    assert "<tr><th>run at (UTC)</th><td><code>2026-11-23 09:30:00 UTC</code></td></tr>" in block
    assert f"<tr><th>Python</th><td><code>{platform.python_version()}</code></td></tr>" in block
    assert f"<tr><th>pulumi SDK</th><td><code>{version('pulumi')}</code></td></tr>" in block
    assert "<tr><th>program version</th>" in block


def test_provenance_outside_a_git_checkout_says_so(tmp_path):
    found = collect("prod", "2026-11-01", WHEN, root=tmp_path)
    assert found.commit == "not a git checkout" and found.dirty is None
    assert ("uncommitted changes", "n/a") in found.rows()


def test_provenance_notices_uncommitted_changes(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, check=True)

    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("-c", "user.email=r@example.com", "-c", "user.name=r", "commit", "-qm", "one")
    clean = collect("prod", "2026-11-01", WHEN, root=tmp_path)
    assert len(clean.commit) == 40 and clean.dirty is False
    (tmp_path / "f").write_text("2")
    assert collect("prod", "2026-11-01", WHEN, root=tmp_path).dirty is True


def test_printed_html_keeps_every_control_evidence_expanded(preview_plan):
    report = render_report(preview_plan, evaluate(preview_plan), "html", now=WHEN)
    assert report.count("<details open>") == len(CONTROLS)
    assert "<details>" not in report and "<details " not in report.replace("<details open>", "")


def test_markdown_report_links_its_pictures_as_files_github_renders(prod_plan):
    files = {"topology": "report-topology.svg", "cost": "report-cost.svg"}
    report = render_report(prod_plan, evaluate(prod_plan), "markdown", now=WHEN, picture_files=files)
    assert "![Topology of stack prod](report-topology.svg)" in report
    assert "![Monthly cost of stack prod against its budget](report-cost.svg)" in report
    assert "<svg" not in report  # GitHub strips inline SVG from Markdown
    assert "| run at (UTC) | `2026-11-23 09:30:00 UTC` |" in report


def test_proof_results_mark_each_test_and_a_failed_one_turns_the_verdict_red(prod_plan):
    results = evaluate(prod_plan)
    proofs = _all_proofs(PASSED)
    report = render_report(prod_plan, results, "markdown", now=WHEN, proofs=proofs)
    assert ("**COMPLIANT: every mandatory control passes and every test proving them passed in this run**"
            in report)
    first = CONTROLS[0].proven_by[0]
    assert f"- `{first}` (passed)" in report
    n = len(CONTROLS[0].proven_by)  # budget-cap's
    assert f"| {n}/{n} passed |" in report
    proofs[first] = FAILED
    text, red = verdict(results, proofs)
    assert red and text == "BLOCKED: 1 test(s) proving the controls did not pass in this run"
    html = render_report(prod_plan, results, "html", now=WHEN, proofs=proofs)
    assert f'<li><code>{first}</code> <span class="failed">failed</span></li>' in html
    assert '<p class="verdict-red">' in html
    del proofs[first]  # a proof pytest never reported is not a pass either
    assert verdict(results, proofs)[1]


def test_proof_run_reads_each_tests_outcome_from_pytests_junit_xml(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_sample.py").write_text(
        "import pytest\n"
        "def test_holds():\n    assert True\n"
        "def test_breaks():\n    assert 1 == 2\n"
        "@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_one_case_breaks(n):\n    assert n == 1\n"
        "def test_skipped():\n    pytest.skip('not here')\n"
        "class TestGroup:\n    def test_method(self):\n        assert True\n"
        "def test_not_asked():\n    assert False\n")
    ids = [f"tests/test_sample.py::{name}" for name in
           ("test_holds", "test_breaks", "test_one_case_breaks", "test_skipped", "TestGroup::test_method")]
    found = run_proofs(ids, root=tmp_path)
    assert found == {ids[0]: PASSED, ids[1]: FAILED, ids[2]: FAILED, ids[3]: SKIPPED, ids[4]: PASSED}
    assert "tests/test_sample.py::test_not_asked" not in found  # exactly the ids asked for run


def test_a_proof_pytest_does_not_report_is_not_run(tmp_path):
    """A proof a plugin deselects (here a conftest hook) runs nowhere: it is `not run`, never passed."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text(
        "def pytest_collection_modifyitems(config, items):\n"
        "    kept = [i for i in items if i.name != 'test_dropped']\n"
        "    config.hook.pytest_deselected(items=[i for i in items if i not in kept])\n"
        "    items[:] = kept\n")
    (tmp_path / "tests" / "test_sample.py").write_text(
        "def test_holds():\n    assert True\n"
        "def test_dropped():\n    assert True\n")
    ids = ["tests/test_sample.py::test_holds", "tests/test_sample.py::test_dropped"]
    assert run_proofs(ids, root=tmp_path) == {ids[0]: PASSED, ids[1]: NOT_RUN}


def test_a_parametrized_proof_with_a_skipped_case_is_not_passed():
    cases = ('<testcase classname="tests.policy.test_x" name="test_a[1]"/>'
             '<testcase classname="tests.policy.test_x" name="test_a[2]"><skipped message="no"/></testcase>'
             '<testcase classname="tests.policy.test_x" name="test_b[1]"><skipped message="no"/></testcase>'
             '<testcase classname="tests.policy.test_x" name="test_b[2]"><failure message="x"/></testcase>')
    assert outcomes(f"<testsuites><testsuite>{cases}</testsuite></testsuites>") == {
        "tests/policy/test_x.py::test_a": SKIPPED, "tests/policy/test_x.py::test_b": FAILED}


def test_report_without_stack_is_prods_as_its_help_says_with_its_pictures_beside_it(tmp_path, capsys):
    out = tmp_path / "review.md"
    assert main(["report", "-o", str(out)]) == EXIT_OK
    report = out.read_text()
    assert report.startswith("# Compliance report: stack `prod`")
    assert "![Topology of stack prod](review-topology.svg)" in report
    for picture in ("review-topology.svg", "review-cost.svg"):
        ET.parse(tmp_path / picture)
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "default: prod" in capsys.readouterr().out


def test_report_of_a_failing_stack_exits_1_like_plan(tmp_path, capsys):
    raw = stack_raw("prod")
    raw["budget"]["monthly_usd"] = 250_000  # below the max-scale estimate
    code = main(["report", "--stack", "prod", "--config-file", str(write_stack(tmp_path, raw))])
    assert code == EXIT_POLICY
    assert "**BLOCKED: a mandatory control fails (budget-cap)**" in capsys.readouterr().out


def test_topology_svg_option_writes_the_picture_only(tmp_path, capsys):
    out = tmp_path / "topology.svg"
    assert main(["report", "--stack", "preview", "--topology-svg", str(out)]) == EXIT_OK
    assert ET.parse(out).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert capsys.readouterr().out == ""


def test_with_tests_runs_the_proof_tests_in_pytest_and_shows_their_results(tmp_path, monkeypatch):
    import dataclasses

    import infra.policy.report
    import infra.policy.rules

    # The real proof lists take minutes; here each control names one quick real test, run by real pytest.
    quick = "tests/policy/test_controls.py::test_the_controls_in_order"
    controls = [dataclasses.replace(c, proven_by=[quick]) for c in CONTROLS]
    monkeypatch.setattr(infra.policy.rules, "CONTROLS", controls)
    monkeypatch.setattr(infra.policy.report, "CONTROLS", controls)
    out = tmp_path / "report.html"
    assert main(["report", "--stack", "preview", "--format", "html", "--with-tests", "-o", str(out)]) == EXIT_OK
    page = out.read_text()
    assert page.count(f'<li><code>{quick}</code> <span class="passed">passed</span></li>') == len(CONTROLS)
    assert "every test proving them passed in this run" in page and "<td>1/1 passed</td>" in page
