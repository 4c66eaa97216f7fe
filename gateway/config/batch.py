"""The `batch:` section: OpenAI's Files and Batch API (gateway/batch/), its file store, pricing and governor."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    # As native.py's: unknown keys are typos more often than not (not imported: native.py imports this module).
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Files(_Strict):
    bucket: str = Field(min_length=3)
    region: str = Field(min_length=1)
    prefix: str = "files/"
    kms_key_id: str | None = None


class BatchFiles(_Strict):
    """Where uploaded and output files live: exactly one of a local directory (a laptop) or an S3 bucket."""

    local_dir: str | None = Field(None, min_length=1)
    s3: S3Files | None = None

    @model_validator(mode="after")
    def _one(self) -> BatchFiles:
        if (self.local_dir is None) == (self.s3 is None):
            raise ValueError("batch.files: set exactly one of local_dir or s3")
        return self


class BatchSettings(_Strict):
    files: BatchFiles
    price_fraction: float = Field(0.5, ge=0, le=1)  # OpenAI's Batch API: 50% of the interactive price
    concurrency: int = Field(8, ge=1, le=1024)  # lines of one batch in flight at once
    # A batch pauses its next line while this many interactive calls are in flight on its deployments; 0: never.
    yield_to_interactive: int = Field(1, ge=0)
    # OpenAI's limits: "up to 50,000 requests, and can be up to 200 MB in size" (the input file, in
    # https://platform.openai.com/docs/api-reference/batch/create).
    max_file_bytes: int = Field(209_715_200, ge=1)
    max_lines: int = Field(50_000, ge=1)
    models: dict[str, str] = {}  # a line naming the key runs on the value, a `tier: batch` model
    # How long a replica's claim on a batch lasts unrenewed: a dead replica's batches are taken over after it.
    lease_seconds: float = Field(30, gt=0, le=3600)
    completion_window_seconds: int = Field(86_400, ge=1)  # `24h`: a batch not done by then expires


def check_batch(batch: BatchSettings | None, has_ledger: bool, tiers: dict[str, str]) -> None:
    """Cross-checks against the rest of the config (GatewayConfig._references; `tiers`: each model alias's tier)."""
    if batch is None:
        return
    if not has_ledger:
        raise ValueError("batch: needs a 'ledger' section (batches, their lines and spend live there)")
    for name, target in batch.models.items():
        if name not in tiers:
            raise ValueError(f"batch.models.{name}: {name!r} is not a model alias")
        if tiers.get(target) != "batch":
            raise ValueError(f"batch.models.{name}: {target!r} is not a model alias with `tier: batch`")
