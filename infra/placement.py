"""Where things land in a region: the zones its network spans, the zones each pool uses, and what the facts forbid."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from infra.catalog import Catalog

if TYPE_CHECKING:
    from infra.config import Pool, Region, StackConfig

NETWORK_ZONES = 3
ZONE_ID = re.compile(r"^[a-z]{2,5}[0-9]-az[0-9]+$")


def network_zones(region: Region, system_instance_type: str, catalog: Catalog) -> list[str]:
    """The zone IDs the region's VPC spans: reservation zones first, then the zones that offer most of the
    region's instance types (the system nodes' included), in the catalog's order."""
    zones = catalog.regions[region.name]
    reserved = {p.reservation.availability_zone for p in region.pools if p.reservation}
    types = [t for p in region.pools for t in p.instance_types] + [system_instance_type]

    def rank(zone: str) -> tuple[bool, int, int]:
        offering = sum(zone in catalog.zones_offering(t, region.name) for t in types)
        return zone not in reserved, -offering, zones.index(zone)

    chosen = sorted(zones, key=rank)[:NETWORK_ZONES]
    return sorted(chosen, key=zones.index)


def pool_zones(region: Region, pool: Pool, system_instance_type: str, catalog: Catalog) -> list[str]:
    """The network zones a pool's nodes may start in: its reservation's zone, or every zone offering all its types."""
    if pool.reservation is not None:
        return [pool.reservation.availability_zone]
    return [z for z in network_zones(region, system_instance_type, catalog)
            if all(z in catalog.zones_offering(t, region.name) for t in pool.instance_types)]


def placement_problems(cfg: StackConfig, i: int, catalog: Catalog) -> list[tuple[str, str]]:
    """Offerings, zones and reservations of regions[i], checked against the facts; paths without the namespace."""
    region = cfg.regions[i]
    at = f"regions[{i}]"
    problems: list[tuple[str, str]] = []
    system = cfg.cluster.system_instance_type
    zones = network_zones(region, system, catalog)
    if system in catalog.instances and not all(z in catalog.zones_offering(system, region.name) for z in zones):
        offered = ", ".join(catalog.zones_offering(system, region.name)) or "none"
        problems.append(("cluster.system_instance_type",
                         f"{system} is not offered in every zone the network of {region.name} uses "
                         f"({', '.join(zones)}; offered in: {offered})"))
    for j, pool in enumerate(region.pools):
        pat = f"{at}.pools[{j}]"
        known = [t for t in pool.instance_types if t in catalog.instances]
        offered_everywhere = True
        for k, itype in enumerate(pool.instance_types):
            if itype not in catalog.instances:
                continue
            if not catalog.zones_offering(itype, region.name):
                offered_everywhere = False
                elsewhere = ", ".join(catalog.regions_offering(itype)) or "no region in infra/catalog.yaml"
                problems.append((f"{pat}.instance_types[{k}]",
                                 f"{itype} is not offered in {region.name} (offered in: {elsewhere})"))
            elif not catalog.prices_known(itype, region.name):
                problems.append((f"{pat}.instance_types[{k}]",
                                 f"no {itype} price for {region.name} in infra/catalog.yaml"))
        problems.extend(_reservation_problems(region, pool, pat, catalog))
        if offered_everywhere and known and pool.reservation is None \
                and not pool_zones(region, pool, system, catalog):
            where = "; ".join(f"{t}: {', '.join(catalog.zones_offering(t, region.name))}" for t in known)
            problems.append((f"{pat}.instance_types",
                             f"no zone of {region.name}'s network ({', '.join(zones)}) offers all of pool "
                             f"{pool.name}'s types ({where}); split the pool or drop a type"))
    return problems


def _reservation_problems(region: Region, pool: Pool, pat: str, catalog: Catalog) -> list[tuple[str, str]]:
    res = pool.reservation
    if pool.reserved and res is None:
        return [(f"{pat}.reservation", "capacity 'reserved' needs a reservation: "
                                       "{kind: capacity-block|odcr, id: cr-..., availability_zone: <zone ID>}")]
    if res is None:
        return []
    problems = []
    if not pool.reserved:
        problems.append((f"{pat}.capacity", f"pool {pool.name} has a reservation, so its capacity must be 'reserved'"))
    if len(pool.instance_types) != 1:
        problems.append((f"{pat}.instance_types", "a reservation holds one instance type; list exactly that one"))
    zones = catalog.regions.get(region.name, [])
    if not ZONE_ID.match(res.availability_zone):
        problems.append((f"{pat}.reservation.availability_zone",
                         f"{res.availability_zone!r} is not a zone ID; give the reservation's AvailabilityZoneId "
                         f"(one of {', '.join(zones)}), not its zone name"))
    elif res.availability_zone not in zones:
        problems.append((f"{pat}.reservation.availability_zone",
                         f"{res.availability_zone} is not a zone of {region.name} (zones: {', '.join(zones)})"))
    elif (pool.instance_types
          and res.availability_zone not in catalog.zones_offering(pool.instance_types[0], region.name)):
        problems.append((f"{pat}.reservation.availability_zone",
                         f"{pool.instance_types[0]} is not offered in {res.availability_zone} (offered in: "
                         f"{', '.join(catalog.zones_offering(pool.instance_types[0], region.name)) or 'none'})"))
    return problems
