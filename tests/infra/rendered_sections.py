"""The rendered gateway config's `ladders`, `cache`, `batch` sections and `models[].tier`, judged against the shapes of
the design those sections share with the gateway (gateway/config/ladders.py, cache.py, batch.py and Model.tier,
written on other branches).

MERGE: once the gateway's own models are merged, `gateway_parsable` returns the config unchanged (the gateway's
parser then judges every section itself) and `SECTIONS` is replaced by `gateway.config.native.GatewayConfig`: one
place, this module, for every test that loads a rendered config (tests/infra/test_components.py,
test_gateway_stores.py, test_bedrock_fallback.py, tests/charts/test_gateway_chart.py).
"""
from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LadderRule(_Strict):
    prompt_tokens_over: int | None = None
    tools: bool | None = None
    start_at: str

    @model_validator(mode="after")
    def _one_condition(self) -> LadderRule:
        if (self.prompt_tokens_over is None) == (self.tools is None) or self.tools is False:
            raise ValueError("a rule has exactly one condition: prompt_tokens_over: N or tools: true")
        return self


class LadderPins(_Strict):
    teams: dict[str, str] = {}
    keys: dict[str, str] = {}


class Ladder(_Strict):
    alias: str
    rungs: list[str] = Field(min_length=2)
    escalate_on: list[Literal["error", "invalid_json", "length", "empty"]] = ["error", "invalid_json", "length",
                                                                             "empty"]
    rules: list[LadderRule] = []
    pins: LadderPins = LadderPins()


class CacheSettings(_Strict):
    ttl_seconds: int = Field(3600, ge=1)
    max_entry_bytes: int = Field(1 << 20, ge=1, le=512 << 20)
    max_bytes: int = Field(256 << 20, ge=1)
    hit_cost_fraction: float = Field(0.0, ge=0, le=1)
    scope: Literal["team", "key"] = "team"
    models: list[str] = []
    teams: list[str] = []
    keys: list[str] = []
    temperature_above_zero: bool = False


class S3Files(_Strict):
    bucket: str
    region: str
    prefix: str = ""
    kms_key_id: str | None = None


class BatchFiles(_Strict):
    local_dir: str | None = None
    s3: S3Files | None = None

    @model_validator(mode="after")
    def _one(self) -> BatchFiles:
        if (self.local_dir is None) == (self.s3 is None):
            raise ValueError("batch.files needs exactly one of local_dir, s3")
        return self


class BatchSettings(_Strict):
    files: BatchFiles
    price_fraction: float = Field(0.5, gt=0, le=1)
    concurrency: int = Field(8, ge=1)
    yield_to_interactive: int = Field(1, ge=0)
    max_file_bytes: int = Field(209715200, ge=1)
    max_lines: int = Field(50000, ge=1)
    models: dict[str, str] = {}


class Sections(_Strict):
    """The three sections and the tier of each model, with the design's cross-checks (rungs, cache models and batch
    targets are configured aliases; a batch target is `tier: batch`; batch needs the ledger)."""
    ladders: list[Ladder] = []
    cache: CacheSettings | None = None
    batch: BatchSettings | None = None
    tiers: dict[str, Literal["interactive", "batch"]]
    has_ledger: bool

    @model_validator(mode="after")
    def _references(self) -> Sections:
        for ladder in self.ladders:
            if ladder.alias in self.tiers:
                raise ValueError(f"ladder {ladder.alias} shadows a model alias")
            unknown = [r for r in ladder.rungs if r not in self.tiers]
            if unknown:
                raise ValueError(f"ladder {ladder.alias}: rungs {unknown} are not configured aliases")
            for rule in ladder.rules:
                if rule.start_at not in ladder.rungs:
                    raise ValueError(f"ladder {ladder.alias}: start_at {rule.start_at} is not a rung")
        if self.cache is not None:
            unknown = [m for m in self.cache.models if m != "*" and m not in self.tiers]
            if unknown:
                raise ValueError(f"cache.models {unknown} are not configured aliases")
            if not (self.cache.models or self.cache.teams or self.cache.keys):
                raise ValueError("cache names no model, team or key")
        if self.batch is not None:
            if not self.has_ledger:
                raise ValueError("batch needs the ledger section")
            for name, target in self.batch.models.items():
                if name not in self.tiers or self.tiers.get(target) != "batch":
                    raise ValueError(f"batch.models {name}: {target} is not a configured tier: batch alias")
        return self


SECTIONS = ("ladders", "cache", "batch")


def sections(config: dict[str, Any]) -> Sections:
    """The rendered config's issue-19 sections, validated (raises pydantic's ValidationError)."""
    return Sections.model_validate({
        **{k: config[k] for k in SECTIONS if k in config},
        "tiers": {m["alias"]: m.get("tier", "interactive") for m in config.get("models", [])},
        "has_ledger": "ledger" in config})


def gateway_parsable(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without what only the merged gateway parses: its sections validated here first, then removed."""
    sections(config)
    out = copy.deepcopy({k: v for k, v in config.items() if k not in SECTIONS})
    for model in out.get("models", []):
        model.pop("tier", None)
    return out
