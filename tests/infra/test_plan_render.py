"""A plan renders each Helm release once: the controls pick the kinds they read out of that one render."""
from __future__ import annotations

from typing import Any

from infra.plan import manifests
from infra.plan.cost import HELM_RELEASE
from infra.plan.manifests import EXPOSING_KINDS, SCHEDULED_KINDS, render_release
from infra.plan.progress import render_charts
from infra.plan.run import Plan


class OneRelease:
    """The part of a Plan render_charts reads, holding one release."""

    def __init__(self, release: Any) -> None:
        self.release = release

    def of_type(self, kind: str) -> list[Any]:
        return [self.release] if kind == HELM_RELEASE else []


def test_each_release_is_rendered_by_helm_once_whichever_kinds_the_controls_read(preview_plan: Plan) -> None:
    gateway = next(r for r in preview_plan.of_type(HELM_RELEASE) if "gateway" in r.name)
    render_charts(OneRelease(gateway))  # type: ignore[arg-type]
    helm_calls = manifests._helm.cache_info().misses
    # The kinds of today's controls (capacity-fit, cluster-hardening, the gateway's store) and any a new one reads.
    for kinds in (SCHEDULED_KINDS, EXPOSING_KINDS, ("StatefulSet",), ("ConfigMap",)):
        rendered = render_release(gateway, kinds)
        assert rendered.error == ""
        assert all(obj["kind"] in kinds for obj in rendered.objects if obj["kind"] != "StatefulSet")
    assert manifests._helm.cache_info().misses == helm_calls
    assert render_release(gateway, ("ConfigMap",)).objects  # the gateway's rendered config
