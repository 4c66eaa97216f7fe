"""The CrossGuard policies: each control as a stack policy over the resources the engine reports, with its policy config
schema."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    StackValidationArgs,
    StackValidationPolicy,
)

from infra.config import StackConfig
from infra.plan.mocks import PlannedResource
from infra.policy.rules import CONTROLS, DEPLOY_CONTROLS, MANDATORY, Control, PolicyConfig, Resources
from infra.policy.rules.base import GLOBAL, TAG_REGION, TAG_STACK

PACK_NAME = "llm-platform"
CONFIG_DIR = Path(__file__).resolve().parent / "config"

# Every policy takes the same config: the stack's declared intent (see PolicyConfig). The stack name is
# not part of it: it is read from the providers' default tags, so one file serves every pr-<n> stack.
CONFIG_SCHEMA = PolicyConfigSchema(
    properties={
        "stack": {"type": "string", "description": "stack name; default: the providers' llm-platform:stack tag"},
        "environment": {"type": "string", "enum": ["prod", "preview"]},
        "budget_usd": {"type": "number", "exclusiveMinimum": 0},
        "preview_cap_usd": {"type": "number", "exclusiveMinimum": 0},
        "residency": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "region_zones": {"type": "object", "additionalProperties": {"type": "string"}},
        "min_regions_per_model": {"type": "integer", "minimum": 1},
        "restricted_models": {"type": "object", "additionalProperties": {"type": "string"}},
        "batch_models": {"type": "array", "items": {"type": "string"}},
        "models": {"type": "array", "items": {"type": "string"}},
    },
    required=["environment", "budget_usd", "residency", "region_zones", "min_regions_per_model"],
)


def _provider_region(typ: str, props: Mapping[str, Any]) -> str:
    """The region a provider deploys to: AWS by its region (the global-services provider by its tag),
    Kubernetes by the cluster its kubeconfig's `aws eks get-token --region` names."""
    if typ == "pulumi:providers:aws":
        tags = _default_tags(props)
        return GLOBAL if tags.get(TAG_REGION) == GLOBAL else str(props.get("region") or "unknown")
    if typ == "pulumi:providers:kubernetes":
        try:
            kubeconfig = props.get("kubeconfig") or "{}"
            doc = json.loads(kubeconfig) if isinstance(kubeconfig, str) else kubeconfig
            args = doc["users"][0]["user"]["exec"]["args"]
            return str(args[args.index("--region") + 1])
        except (ValueError, KeyError, IndexError, TypeError):
            return "unknown"
    return "unknown"


def _default_tags(props: Mapping[str, Any]) -> dict[str, str]:
    default = props.get("defaultTags") or {}
    if isinstance(default, str):  # providers receive nested inputs as JSON text
        default = json.loads(default)
    return dict(default.get("tags") or {})


def to_planned(resource: PolicyResource) -> PlannedResource:
    """A CrossGuard resource as the record the rules read. Its props are the engine's view of the resource
    (inputs and, once known, outputs) and stay lazy: a value unknown during preview raises only if a rule
    reads it, and CrossGuard then reports the policy as not runnable until the values are known."""
    props = resource.props
    if resource.resource_type.startswith("pulumi:providers:"):
        region = _provider_region(resource.resource_type, props)
    elif resource.provider is not None:
        region = _provider_region(resource.provider.resource_type, resource.provider.props)
    else:
        region = "unknown"
    tags: Mapping[str, str] = {}
    if resource.resource_type.startswith("aws:"):
        tags = props.get("tagsAll") or props.get("tags") or {}
    return PlannedResource(type=resource.resource_type, name=resource.name, region=region, inputs=props,
                           tags=dict(tags), outputs=props)


def policy_config(config: Mapping[str, Any], records: Iterable[PlannedResource]) -> PolicyConfig:
    raw = dict(config)
    if not raw.get("stack"):
        stacks = {s for r in records if r.type == "pulumi:providers:aws"
                  if (s := _default_tags(r.inputs).get(TAG_STACK)) is not None}
        if len(stacks) != 1:
            raise ValueError(f"cannot tell the stack from the providers' {TAG_STACK} tags ({sorted(stacks)}); "
                             f"set `stack` in the policy pack config")
        raw["stack"] = stacks.pop()
    return PolicyConfig.from_json(raw)


def stack_policy(control: Control) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        records = [to_planned(r) for r in args.resources]
        policy = policy_config(args.get_config(), records)
        for violation in control.check(Resources(records), policy).violations:
            report_violation(violation, None)

    return StackValidationPolicy(
        name=control.id,
        description=control.title,
        display_name=control.title,
        remediation_steps=control.description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY if control.enforcement == MANDATORY else EnforcementLevel.ADVISORY,
        config_schema=CONFIG_SCHEMA,
    )


def policies() -> list[Policy]:  # as PolicyPack takes them
    return [stack_policy(c) for c in [*CONTROLS, *DEPLOY_CONTROLS]]


def pack_config(cfg: StackConfig) -> dict[str, dict[str, Any]]:
    """The `--policy-pack-config` document for a stack: the same PolicyConfig for every policy, minus the stack name."""
    intent = {k: v for k, v in PolicyConfig.from_stack(cfg).as_json().items() if k != "stack"}
    return {c.id: dict(intent) for c in [*CONTROLS, *DEPLOY_CONTROLS]}


def write_pack_configs(stacks: Iterable[str] = ("prod", "preview")) -> list[Path]:
    """Regenerate config/<stack>.json from the stack files (run after editing a Pulumi.<stack>.yaml)."""
    from infra.config import load_file, stack_file

    written = []
    CONFIG_DIR.mkdir(exist_ok=True)
    for stack in stacks:
        path = CONFIG_DIR / f"{stack}.json"
        path.write_text(json.dumps(pack_config(load_file(stack_file(stack), stack)), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m infra.policy.pack
    for written_path in write_pack_configs():
        print(f"wrote {written_path}")
