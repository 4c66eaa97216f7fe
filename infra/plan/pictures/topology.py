"""The topology picture: residency zones holding their regions (pools, models, gateway), the DNS names and the
regions each serves, fallback chains, hosted providers and where secrets replicate, as one SVG.

Laid out on a grid computed from character counts (monospace text), so the same plan gives the same bytes.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

from infra.plan.pictures.facts import DnsName, Region, Topology
from infra.plan.pictures.svg import attrs, document, path, rect, text, text_width

# Fills a reader (and tests/infra/test_pictures.py, in a screenshot) tells apart.
ZONE_FILL, ZONE_STROKE = "#e3eefb", "#0969da"
REGION_FILL, REGION_STROKE = "#fff1c7", "#9a6700"
HOSTED_FILL, HOSTED_STROKE = "#fbe3ec", "#bf3989"
CAPACITY_COLOURS = {"reserved": "#8250df", "on-demand": "#0969da", "spot": "#bf8700"}
MUTED = "#57606a"
# A fallback that leaves its residency zone breaks the platform's promise (DESIGN.md: DNS "never carry a request
# out of its residency zone"): drawn red, never left out, so a reviewer sees it.
CROSS_ZONE = "#cf222e"

SIZE, HEAD, LH = 12.0, 14.0, 17.0  # body font, heading font, line height
PAD, GAP, MARGIN, LANE = 12.0, 28.0, 20.0, 34.0


@dataclass(frozen=True)
class Line:
    content: str
    bold: bool = False
    colour: str = "#1f2328"
    swatch: str = ""  # a small square before the text (a pool's capacity type)
    indent: bool = False  # SVG collapses leading spaces: an indented line is moved right instead

    def width(self) -> float:
        return text_width(self.content, HEAD if self.bold else SIZE) + (14 if self.swatch or self.indent else 0)


def _serves(dns: DnsName) -> str:
    how = "latency, health-checked" if dns.routing == "latency" else "simple"
    return f"{dns.name} ({how}) -> {', '.join(dns.regions)}"


def _region_lines(region: Region, own: list[DnsName]) -> list[Line]:
    lines = [Line(region.name, bold=True)]
    lines += [Line(f"gateway  {d.name}", colour=MUTED) for d in own] or [Line("gateway  (none recorded)")]
    lines.append(Line("pools (capacity, types, nodes)", bold=True))
    for p in region.pools:
        lines.append(Line(f"{p.name}  {p.capacity}  {', '.join(p.instance_types)}  {p.min_nodes}-{p.max_nodes}",
                          swatch=CAPACITY_COLOURS.get(p.capacity, MUTED)))
    lines.append(Line("models (replicas, pool)", bold=True))
    lines += [Line(f"{m.name}  x{m.min_replicas}-{m.max_replicas}  on {m.pool}", indent=True) for m in region.models]
    return lines


def _draw_lines(x: float, y: float, lines: list[Line]) -> list[str]:
    out = []
    for i, ln in enumerate(lines):
        base = y + (i + 1) * LH - 4
        tx = x
        if ln.swatch:
            out.append(rect(x, base - 9, 9, 9, ln.swatch))
        if ln.swatch or ln.indent:
            tx += 14
        out.append(text(tx, base, ln.content, HEAD if ln.bold else SIZE, "bold" if ln.bold else "normal", ln.colour))
    return out


def _pairs(regions: list[Region]) -> list[tuple[int, int, list[str], str]]:
    """(from index, to index, aliases, arrows) for each pair of regions in a zone that fall back to each other."""
    out = []
    for i, a in enumerate(regions):
        for j in range(i + 1, len(regions)):
            b = regions[j]
            there, back = a.falls_back_to.get(b.name, []), b.falls_back_to.get(a.name, [])
            if there or back:
                arrows = ("end" if there else "") + ("start" if back else "")
                out.append((i, j, sorted(set(there) | set(back)), arrows))
    return out


def _cross_zone_pairs(topo: Topology) -> list[tuple[Region, Region, list[str], str]]:
    """(region, region in another zone, aliases, arrows) for each such pair where one falls back to the other."""
    regions = topo.regions()
    out = []
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            if a.zone == b.zone:
                continue
            there, back = a.falls_back_to.get(b.name, []), b.falls_back_to.get(a.name, [])
            if there or back:
                out.append((a, b, sorted(set(there) | set(back)), ("end" if there else "") + ("start" if back else "")))
    return out


def _hosted_lines(regions: list[Region]) -> list[Line]:
    providers: dict[str, dict[str, list[str]]] = {}
    for r in regions:
        for host, aliases in r.hosted.items():
            for alias in aliases:
                providers.setdefault(host, {}).setdefault(alias, []).append(r.name)
    lines = [Line("hosted providers (outside every zone)", bold=True)]
    for host in sorted(providers):
        lines.append(Line(host))
        lines += [Line(f"<- {alias} from {', '.join(rs)}", colour=MUTED, indent=True)
                  for alias, rs in sorted(providers[host].items())]
    return lines if providers else []


def _secret_lines(topo: Topology, zone: str, width_chars: int) -> list[Line]:
    lines = []
    for s in (s for s in topo.secrets if s.zone == zone):
        where = f"replicated to {', '.join(s.replicas)}" if s.replicas else "not replicated"
        lines.append(Line(f"secrets ({len(s.names)}): kept in {s.primary}, {where}", bold=True))
        wrapped = textwrap.wrap(", ".join(s.names), max(width_chars, 40), break_on_hyphens=False)
        lines += [Line(chunk, colour=MUTED) for chunk in wrapped]
    return lines


def topology_svg(topo: Topology) -> str:
    """The picture of `topo` as standalone SVG text."""
    own = {r.name: [d for d in topo.dns if d.regions == (r.name,)] for r in topo.regions()}
    zone_names = {z: [d for d in topo.dns if len(d.regions) > 1 and {*d.regions} <= {r.name for r in rs}]
                  for z, rs in topo.zones.items()}
    shown = {d.name for ds in (*own.values(), *zone_names.values()) for d in ds}
    global_names = [d for d in topo.dns if d.name not in shown]

    region_lines = {r.name: _region_lines(r, own[r.name]) for r in topo.regions()}
    rw = max((ln.width() for ls in region_lines.values() for ln in ls), default=100) + 2 * PAD
    rh = max((len(ls) for ls in region_lines.values()), default=1) * LH + 2 * PAD
    zone_w = max(((len(rs) * rw + (len(rs) - 1) * GAP) for rs in topo.zones.values()), default=rw) + 2 * PAD
    hosted = {z: _hosted_lines(rs) for z, rs in topo.zones.items()}
    hosted_w = max((ln.width() for ls in hosted.values() for ln in ls), default=0) + 2 * PAD
    secrets = {z: _secret_lines(topo, z, int((zone_w - 2 * PAD) / text_width("x", SIZE))) for z in topo.zones}
    headers = {z: [Line(f"residency zone {z}", bold=True)] + [Line(f"DNS {_serves(d)}") for d in zone_names[z]]
               for z in topo.zones}
    zone_w = max([zone_w, *(ln.width() + 2 * PAD for ls in (*headers.values(), *secrets.values()) for ln in ls)])

    crossing = _cross_zone_pairs(topo)
    ends: dict[int, list[tuple[float, float, float]]] = {k: [] for k in range(len(crossing))}  # (x, box bottom, row y)
    column = MARGIN + zone_w + 10  # the cross-zone lanes run down the gap right of the zones, one column each

    title = [Line(f"llm-platform stack {topo.stack}: topology of the recorded plan", bold=True)]
    title += [Line(f"DNS {_serves(d)}") for d in global_names]
    width = MARGIN * 2 + zone_w + (GAP * 2 + hosted_w if any(hosted.values()) else 0)
    width = max(width, MARGIN * 2 + max(ln.width() for ln in title), column + 8 * len(crossing) + MARGIN)
    body = _draw_lines(MARGIN, MARGIN, title)
    y = MARGIN + len(title) * LH + GAP / 2

    for zone, regions in topo.zones.items():
        pairs = _pairs(regions)
        top = y
        inner = [f"<g {attrs(class_='zone', data_zone=zone)}>"]
        inner += _draw_lines(MARGIN + PAD, y + PAD / 2, headers[zone])
        ry = y + PAD / 2 + len(headers[zone]) * LH + PAD
        for i, region in enumerate(regions):
            rx = MARGIN + PAD + i * (rw + GAP)
            inner.append(rect(rx, ry, rw, rh, REGION_FILL, REGION_STROKE, rx=6))
            inner += _draw_lines(rx + PAD, ry + PAD, region_lines[region.name])
        lane_y = ry + rh
        for k, (i, j, aliases, arrows) in enumerate(pairs):
            # One lane per pair, its label under its line, so lanes of three or more regions never cross text.
            ly = lane_y + 12 + k * LANE
            xa, xb = MARGIN + PAD + i * (rw + GAP) + rw / 2 + k * 8, MARGIN + PAD + j * (rw + GAP) + rw / 2 - k * 8
            inner.append(path([(xa, lane_y), (xa, ly), (xb, ly), (xb, lane_y)], ZONE_STROKE, 1.5, arrows=arrows))
            inner.append(text(xa, ly + 14, f"cross-region fallback: {', '.join(aliases)}", SIZE - 1,
                              fill=ZONE_STROKE))
        here = [(k, a, b, aliases) for k, (a, b, aliases, _) in enumerate(crossing) if zone in (a.zone, b.zone)]
        for row, (k, a, b, aliases) in enumerate(here):
            ly = lane_y + 12 + (len(pairs) + row) * LANE
            i = next(n for n, r in enumerate(regions) if r.name in (a.name, b.name))
            ends[k].append((MARGIN + PAD + i * (rw + GAP) + rw / 2 - 20 - row * 8, lane_y, ly))
            other = b if regions[i].name == a.name else a
            inner.append(text(MARGIN + PAD, ly + 14, f"cross-ZONE fallback {regions[i].name} - {other.name} (leaves "
                                                     f"zone {zone}): {', '.join(aliases)}", SIZE - 1, fill=CROSS_ZONE))
        sy = lane_y + (len(pairs) + len(here)) * LANE + PAD
        inner += _draw_lines(MARGIN + PAD, sy, secrets[zone])
        bottom = sy + len(secrets[zone]) * LH + PAD
        inner.append("</g>")
        body.append(rect(MARGIN, top, zone_w, bottom - top, ZONE_FILL, ZONE_STROKE, rx=10))
        body += inner
        if hosted[zone]:
            hx, hh = MARGIN + zone_w + GAP * 2, len(hosted[zone]) * LH + 2 * PAD
            hy = top + (bottom - top - hh) / 2
            body.append(rect(hx, hy, hosted_w, hh, HOSTED_FILL, HOSTED_STROKE, rx=6, dash="5 3"))
            body += _draw_lines(hx + PAD, hy + PAD, hosted[zone])
            body.append(path([(MARGIN + zone_w, hy + hh / 2), (hx, hy + hh / 2)], HOSTED_STROKE, 1.5, dash="5 3",
                             arrows="end"))
        y = bottom + GAP
    for k, (_, _, _, arrows) in enumerate(crossing):
        (xa, ba, ya), (xb, bb, yb) = ends[k]
        x = column + k * 8
        body.append(path([(xa, ba), (xa, ya), (x, ya), (x, yb), (xb, yb), (xb, bb)], CROSS_ZONE, 2, arrows=arrows))
    return document(width, y - GAP + MARGIN, f"Topology of stack {topo.stack}", body, arrows=True)
