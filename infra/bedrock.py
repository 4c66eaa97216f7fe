"""Amazon Bedrock model ids as the program uses them: which regions a call may be processed in, and the ARNs
the gateway's role may invoke (facts: bedrock_profiles.yaml, dated, with sources)."""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import yaml

PROFILES_FILE = Path(__file__).with_name("bedrock_profiles.yaml")
# Converse and ConverseStream are authorized as these two actions (bedrock_profiles.yaml, sources.iam).
INVOKE_ACTIONS = ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"]
MODEL_ID = re.compile(r"^[a-z0-9-]+\.[A-Za-z0-9._:-]+$")


@cache
def _profiles() -> tuple[dict[str, list[str]], frozenset[str]]:
    """(geography -> destination regions, prefixes of profiles that may route anywhere)."""
    data = yaml.safe_load(PROFILES_FILE.read_text())
    return ({str(k): [str(r) for r in v] for k, v in data["geographies"].items()},
            frozenset(str(p) for p in data["everywhere"]))


def geographies() -> dict[str, list[str]]:
    return dict(_profiles()[0])


def geography(model_id: str) -> str | None:
    """The cross-region inference profile's geography (`us`, `eu`, ...), or None for a single-region model id.
    Raises ValueError for an id that is neither, or for a profile that may route anywhere (`global.`)."""
    if not MODEL_ID.match(model_id):
        raise ValueError(f"{model_id!r} is not a Bedrock model id (provider.model-version, e.g. "
                         f"anthropic.claude-3-5-haiku-20241022-v1:0) or inference profile id (us.<model id>)")
    prefix = model_id.split(".", 1)[0]
    if prefix in _profiles()[1]:
        raise ValueError(f"{model_id!r} is a global inference profile: Bedrock may process its calls in any "
                         f"commercial region, outside every residency zone; use a geography's profile "
                         f"({', '.join(sorted(geographies()))}) or the plain model id")
    return prefix if prefix in geographies() else None


def processing_regions(model_id: str, source_region: str) -> list[str]:
    """Every region a call for `model_id` made in `source_region` may be processed in."""
    geo = geography(model_id)
    return [source_region] if geo is None else list(geographies()[geo])


def foundation_model(model_id: str) -> str:
    """The model a profile id names (`us.anthropic.x` -> `anthropic.x`); a model id as it is."""
    return model_id.split(".", 1)[1] if geography(model_id) else model_id


def invoke_arns(model_id: str, source_region: str, account: str) -> list[str]:
    """What the role must be allowed to invoke for `model_id` called from `source_region`: the foundation model
    there, or the profile there and its foundation model in each destination region."""
    model = foundation_model(model_id)
    arns = [f"arn:aws:bedrock:{r}::foundation-model/{model}" for r in processing_regions(model_id, source_region)]
    if geography(model_id):
        arns.insert(0, f"arn:aws:bedrock:{source_region}:{account}:inference-profile/{model_id}")
    return arns
