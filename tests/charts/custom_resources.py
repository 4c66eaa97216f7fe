"""Schemas for the custom resources the charts render, from vendored CRDs (tests/charts/crds), checked strictly."""
from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).parent / "crds"
# Custom kinds the charts may render whose CRD is not vendored: their shape is checked by the chart specs. None: the
# Prometheus Operator's ServiceMonitor, PodMonitor and PrometheusRule CRDs are vendored (crds/NOTICE).
UNVENDORED: set[tuple[str, str]] = set()


class UnknownCustomResource(LookupError):
    pass


@cache
def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, made strict."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    out[key] = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return out


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Like kubernetes-validate's strict mode: a field the schema does not declare is an error (the API
    server would prune it silently), unless the schema keeps unknown fields on purpose."""
    if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    for sub in schema.get("properties", {}).values():
        _strict(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _strict(schema[key])
    return schema


def is_custom(obj: dict[str, Any]) -> bool:
    return (obj["apiVersion"], obj["kind"]) in schemas() or (obj["apiVersion"], obj["kind"]) in UNVENDORED


def validate(obj: dict[str, Any]) -> None:
    """Raises jsonschema.ValidationError when `obj` breaks its CRD's schema; UnknownCustomResource when
    no vendored CRD serves its apiVersion and kind."""
    schema = schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        raise UnknownCustomResource(f"no vendored CRD serves {obj['apiVersion']} {obj['kind']}")
    jsonschema.Draft7Validator(schema).validate(obj)
