"""The plan's pictures: the topology drawn from the recorded resources (zones, regions, pools, models, gateways, DNS,
fallback, secrets) and cost against budget, as valid, escaped, deterministic SVG that a browser really shows."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from datetime import UTC, datetime

import pytest

from infra.config import ROOT
from infra.plan.cost import estimate
from infra.plan.pictures import cost_chart, topology
from infra.plan.pictures.cost_chart import cost_svg
from infra.plan.pictures.facts import read_topology
from infra.plan.pictures.topology import topology_svg
from infra.policy.report import render_report
from infra.policy.rules import evaluate
from tests.policy.helpers import find, mutated

SVG = "{http://www.w3.org/2000/svg}"
COMMITTED = ROOT / "docs" / "prod-topology.svg"
REGENERATE = "llmp report --stack prod --topology-svg docs/prod-topology.svg"
RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET = "aws:secretsmanager/secret:Secret"


def picture_of(stack: str, resources: list) -> str:
    cost = estimate(resources, 500_000)
    return topology_svg(read_topology(stack, resources, cost.pools))


def texts(svg: str, within: ET.Element | None = None) -> list[str]:
    root = within if within is not None else ET.fromstring(svg)
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def zone_texts(svg: str) -> dict[str, list[str]]:
    return {g.get("data-zone", ""): texts(svg, g) for g in ET.fromstring(svg).iter(f"{SVG}g")}


def test_topology_shows_each_zone_holding_its_regions_pools_models_and_gateways(prod_plan):
    svg = picture_of("prod", prod_plan.resources)
    zones = zone_texts(svg)
    assert sorted(zones) == ["eu", "us"]
    eu, us = zones["eu"], zones["us"]
    assert {"eu-north-1", "eu-west-2"} <= set(eu) and not {"us-east-1", "us-west-2"} & set(eu)
    assert {"us-east-1", "us-west-2"} <= set(us) and not {"eu-north-1", "eu-west-2"} & set(us)
    assert "residency zone eu" in eu
    assert "h100  reserved  p5.48xlarge  1-2" in eu  # pool: capacity, instance types, node range
    assert "batch  spot  g6e.xlarge, g6.xlarge, g6.2xlarge  0-6" in us
    assert "mistral-small-24b  x1-4  on mid" in eu and not any("mistral" in t for t in us)  # restricted to eu
    assert "qwen2-5-7b-batch  x0-6  on batch" in us  # idles at zero until called
    assert "gateway  eu-west-2.api.llm.example.com" in eu


def test_topology_shows_which_regions_each_dns_name_serves(prod_plan):
    svg = picture_of("prod", prod_plan.resources)
    shown = texts(svg)
    assert ("DNS api.llm.example.com (latency, health-checked) -> eu-north-1, eu-west-2, us-east-1, us-west-2"
            in shown)
    assert "DNS eu.api.llm.example.com (latency, health-checked) -> eu-north-1, eu-west-2" in zone_texts(svg)["eu"]
    assert "DNS us.api.llm.example.com (latency, health-checked) -> us-east-1, us-west-2" in zone_texts(svg)["us"]
    assert not any("acm-validations" in t or t.startswith("DNS _") for t in shown)  # certificate records


def test_topology_shows_fallback_chains_hosted_providers_and_secret_replication(prod_plan):
    svg = picture_of("prod", prod_plan.resources)
    eu = zone_texts(svg)["eu"]
    assert "cross-region fallback: llama-3-1-8b, llama-3-3-70b, mistral-small-24b, qwen2-5-7b-batch" in eu
    assert "secrets (6): kept in eu-north-1, replicated to eu-west-2" in eu
    shown = texts(svg)
    assert shown.count("hosted providers (outside every zone)") == 2
    assert "<- llama-3-3-70b from eu-north-1, eu-west-2" in shown and "api.together.xyz" in shown
    assert "<- llama-3-1-8b from us-east-1, us-west-2" in shown and "api.groq.com" in shown
    arrows = [p for p in ET.fromstring(svg).iter(f"{SVG}path") if p.get("marker-end") or p.get("marker-start")]
    both_ways = [p for p in arrows if p.get("marker-end") and p.get("marker-start")]
    assert len(both_ways) == 2  # one cross-region lane per zone, each region falling back to the other


def test_a_fallback_out_of_its_residency_zone_is_drawn_red_never_dropped(prod_plan):
    """A gateway in eu whose config reaches us-east-1 (a wrong plan): the picture shows that lane in red."""
    def eu_falls_back_to_the_us(rs: list) -> None:
        gateway = next(r for r in rs if r.type == RELEASE and r.region == "eu-north-1"
                       and "config" in (r.inputs.get("values") or {}))
        model = next(m for m in gateway.inputs["values"]["config"]["models"] if m["alias"] == "llama-3-3-70b")
        model["deployments"].append({"name": "llama-3-3-70b-us-east-1", "region": "us-east-1", "residency": "us",
                                     "api_base": "https://us-east-1.api.llm.example.com/v1"})

    svg = picture_of("prod", mutated(prod_plan, eu_falls_back_to_the_us))
    label = "cross-ZONE fallback eu-north-1 - us-east-1 (leaves zone eu): llama-3-3-70b"
    assert label in zone_texts(svg)["eu"]
    assert "cross-ZONE fallback us-east-1 - eu-north-1 (leaves zone us): llama-3-3-70b" in zone_texts(svg)["us"]
    red = [p for p in ET.fromstring(svg).iter(f"{SVG}path") if p.get("stroke") == topology.CROSS_ZONE]
    assert len(red) == 1 and (red[0].get("marker-start") or red[0].get("marker-end"))
    assert not any("cross-ZONE" in t for t in texts(picture_of("prod", prod_plan.resources)))


def test_topology_is_drawn_from_the_recorded_resources_not_the_config(prod_plan):
    def drop_replica_and_model(rs: list) -> None:
        find(rs, SECRET, "llm-platform-secrets-eu-gateway-master-key").inputs["replicas"] = []
        rs.remove(next(r for r in rs if r.type == RELEASE and r.region == "eu-west-2"
                       and (r.inputs.get("values") or {}).get("model", {}).get("servedName") == "mistral-small-24b"))

    svg = picture_of("prod", mutated(prod_plan, drop_replica_and_model))
    eu = zone_texts(svg)["eu"]
    # its own Redis URL was never replicated; the master key now is not either
    assert "secrets (2): kept in eu-north-1, not replicated" in eu
    assert "secrets (5): kept in eu-north-1, replicated to eu-west-2" in eu
    assert eu.count("mistral-small-24b  x1-4  on mid") == 1  # only eu-north-1 still serves it


def test_topology_text_is_escaped(prod_plan):
    def hostile_model_name(rs: list) -> None:
        release = next(r for r in rs if r.type == RELEASE and r.region == "eu-west-2"
                       and (r.inputs.get("values") or {}).get("model", {}).get("servedName") == "mistral-small-24b")
        release.inputs["values"]["model"]["servedName"] = "m<&>\"x"
        release.inputs["values"]["podLabels"]["llm-platform/model"] = "m<&>\"x"

    svg = picture_of("prod", mutated(prod_plan, hostile_model_name))
    assert "m&lt;&amp;&gt;\"x  x1-4  on mid" in svg
    assert 'm<&>"x  x1-4  on mid' in texts(svg)  # parses back to the name as written


def test_same_plan_gives_the_same_bytes(prod_plan, preview_plan):
    assert picture_of("prod", prod_plan.resources) == picture_of("prod", list(prod_plan.resources))
    assert picture_of("preview", preview_plan.resources) != picture_of("prod", prod_plan.resources)
    ET.fromstring(picture_of("preview", preview_plan.resources))


def test_the_readme_topology_picture_is_the_prod_plans(prod_plan):
    fresh = picture_of("prod", prod_plan.resources)
    assert COMMITTED.is_file(), f"docs/prod-topology.svg is missing; make it with: {REGENERATE}"
    assert COMMITTED.read_text() == fresh, f"docs/prod-topology.svg is out of date; regenerate it with: {REGENERATE}"
    assert "![Topology of the prod stack](docs/prod-topology.svg)" in (ROOT / "README.md").read_text()


def test_cost_chart_draws_stack_regions_and_pools_against_the_budget_line(prod_plan):
    cost = estimate(prod_plan.resources, 500_000)
    root = ET.fromstring(cost_svg(cost, "prod"))
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("height") == str(int(cost_chart.BAR))]
    lows = [float(r.get("width", 0)) for r in rects if r.get("fill") == cost_chart.MIN_FILL]
    highs = [float(r.get("width", 0)) for r in rects if r.get("fill") == cost_chart.MAX_FILL]
    assert len(lows) == len(highs) == 1 + len(cost.regions) + len(cost.pools)
    assert all(lo <= hi + 0.1 for lo, hi in zip(lows, highs, strict=True))
    (budget,) = [ln for ln in root.iter(f"{SVG}line") if ln.get("stroke") == cost_chart.BUDGET_STROKE]
    bars_start = float(rects[0].get("x", 0))
    budget_x = float(budget.get("x1", 0)) - bars_start
    # The stack's max bar ends where its share of the budget says: 450,543 / 500,000 of the budget line's length.
    assert highs[0] / budget_x == pytest.approx(cost.monthly_usd_max / 500_000, abs=0.002)
    shown = [t.text for t in root.iter(f"{SVG}text")]
    assert "budget $500,000" in shown and "stack total" in shown and "h100 (reserved)" in shown
    assert f"${cost.monthly_usd_min:,.0f} - ${cost.monthly_usd_max:,.0f}" in shown


def test_plan_as_html_shows_both_pictures_above_its_tables(capsys):
    from infra.cli import EXIT_OK, main

    assert main(["plan", "--stack", "preview", "--format", "html"]) == EXIT_OK
    page = capsys.readouterr().out
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    topo = page[page.index('<figure id="topology">') + 22:page.index("</figure>")]
    assert "<title>Topology of stack preview</title>" in topo
    ET.fromstring(topo)
    assert '<figure id="cost">' in page and "<title>Monthly cost of stack preview against its budget</title>" in page
    assert page.index('<figure id="cost">') < page.index("<th>pool</th>") < page.index("<h2>Policy controls</h2>")


# --- what a browser shows -------------------------------------------------------------------------------------

def decode_png(data: bytes) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows, bytes per pixel) of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes),
    undoing the five row filters of https://www.w3.org/TR/png-3/#9Filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body, pos = data[pos + 8:pos + 8 + length], pos + 12 + length
        header, idat = (body, idat) if kind == b"IHDR" else (header, idat + body if kind == b"IDAT" else idat)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytes(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind in (1, 3, 4):
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                if kind == 1:
                    line[i] = (line[i] + left) & 255
                elif kind == 3:
                    line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
                else:
                    up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(line))
        prev = rows[-1]
    return width, height, rows, bpp


def colour_box(rows: list[bytes], bpp: int, hex_colour: str) -> tuple[int, tuple[int, int, int, int]]:
    """(pixels of that exact colour, their bounding box (x0, y0, x1, y1))."""
    rgb = bytes.fromhex(hex_colour.lstrip("#"))
    needle = rgb + b"\xff" if bpp == 4 else rgb
    count, xs, ys = 0, [], []
    for y, row in enumerate(rows):
        start = row.find(needle)
        while start != -1:
            if start % bpp == 0:
                count += 1
                xs.append(start // bpp)
                ys.append(y)
            start = row.find(needle, start + 1)
    return count, ((min(xs), min(ys), max(xs), max(ys)) if xs else (0, 0, 0, 0))


def test_a_headless_browser_shows_the_reports_topology_and_cost_pictures(prod_plan, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is missing: install it with `make chromium` (Debian package chromium)")
    page = tmp_path / "report.html"
    html = render_report(prod_plan, evaluate(prod_plan), "html", now=datetime(2026, 11, 25, tzinfo=UTC))
    page.write_text(html)
    # The window is as tall as the pictures plus the text around them (title, provenance, captions), so the cost
    # chart is on screen whatever the pictures' sizes become.
    window = round(sum(float(h) for h in re.findall(r'<svg [^>]*?height="([0-9.]+)"', html))) + 700
    shot = tmp_path / "report.png"
    # --no-sandbox: the suite may run as root, where Chromium refuses its sandbox; a profile of its own
    # (--user-data-dir) so no state of another Chromium run on this machine is shared or left behind.
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", "--force-device-scale-factor=1",
                           f"--screenshot={shot}", f"--window-size=1280,{window}", page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}"
    width, height, rows, bpp = decode_png(shot.read_bytes())
    assert (width, height) == (1280, window)
    boxes = {name: colour_box(rows, bpp, colour) for name, colour in [
        ("zone", topology.ZONE_FILL), ("region", topology.REGION_FILL), ("hosted", topology.HOSTED_FILL),
        ("min", cost_chart.MIN_FILL), ("max", cost_chart.MAX_FILL)]}
    for name, (count, _) in boxes.items():
        assert count > 2000, f"the screenshot shows almost no {name} fill ({count} pixels): {boxes}"
    (_, zone), (_, region), (_, hosted) = boxes["zone"], boxes["region"], boxes["hosted"]
    assert zone[0] <= region[0] and region[2] <= zone[2] and zone[1] <= region[1] and region[3] <= zone[3]
    assert hosted[0] > zone[2]  # the hosted providers sit outside every zone, to its right
    # Four region boxes (two per zone, two zones) at their drawn size: the regions fill most of the zones.
    assert boxes["region"][0] > 0.4 * boxes["zone"][0]
    cost_top = min(boxes["min"][1][1], boxes["max"][1][1])
    assert cost_top > zone[3], "the cost chart comes after the topology"
    # The whole cost chart is on screen: every min-scale bar's pixels are there (anti-aliased edges aside).
    cost = html[html.index('<figure id="cost">'):]
    drawn = sum(float(w) * float(h) for w, h in re.findall(
        rf'<rect x="[^"]*" y="[^"]*" width="([^"]*)" height="([^"]*)" rx="[^"]*" fill="{cost_chart.MIN_FILL}"', cost))
    assert drawn > 2000 and boxes["min"][0] >= 0.9 * drawn, (boxes["min"], drawn)
    assert boxes["min"][1][3] < height - 1, "the cost chart reaches the bottom edge: it is cut off"


def test_png_decoder_reads_every_filter():
    """The decoder above is ours: check it on a second row written with each filter type by hand."""
    first, second = bytes([10, 20, 30, 40, 50, 60]), bytes([15, 25, 35, 200, 210, 220])
    filtered = {
        1: bytes([15, 25, 35, 185, 185, 185]),  # Sub: minus the pixel to the left
        2: bytes((b - a) & 255 for a, b in zip(first, second, strict=True)),  # Up: minus the pixel above
        3: bytes([10, 15, 20, 200 - 27, 210 - 37, 220 - 47]),  # Average: minus floor((left + up) / 2)
        4: bytes([5, 5, 5, 160, 160, 160]),  # Paeth: minus the neighbour nearest left + up - corner (here: up)
    }
    for kind, row in filtered.items():
        body = zlib.compress(b"\x00" + first + bytes([kind]) + row)
        png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
               + b"\0" * 4 + struct.pack(">I", len(body)) + b"IDAT" + body + b"\0" * 4
               + struct.pack(">I", 0) + b"IEND" + b"\0" * 4)
        assert decode_png(png)[2] == [first, second], kind
