"""How a simulated replica behaves (its settings, faults included) and what it counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Fault = Literal[
    "none",
    "error_500",
    "rate_limit_429",
    "hang_before_headers",
    "hang_mid_stream",
    "truncate_stream",
    "malformed_json",
]
FAULTS: tuple[str, ...] = Fault.__args__  # type: ignore[attr-defined]

@dataclass
class SimSettings:
    """Behaviour of one simulated replica; tests change it while the server runs."""

    models: tuple[str, ...] = ("sim-model",)
    # Serve whatever `model` a request names (what `python -m gateway.sim` does without --model), so that any
    # config, examples/litellm.yaml's Llama names included, works against it as is; /v1/models lists `models`.
    any_model: bool = False
    ttft: float = 0.0  # seconds before the first token (and before a non-streaming answer)
    tokens_per_s: float = 0.0  # 0: every token at once
    output_tokens: int = 8  # completion length when max_tokens does not cut it shorter
    fault: Fault = "none"
    fault_count: int | None = None  # faulty requests before healing; None: forever
    retry_after: float = 1.0
    name: str = "sim"  # echoed in the x-sim-replica header so tests see who answered
    # Sent on every answer, 429s included, as OpenAI sends its x-ratelimit-* headers
    # (https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers).
    headers: dict[str, str] = field(default_factory=dict)
    error_status: int = 500  # the status of the "error_500" fault (502, 503, 504 as gateways in front of vLLM send)
    error_message: str = "simulated engine failure"
    legacy_errors: bool = False  # the "error_500" and "rate_limit_429" faults in older vLLM's flat error shape
    # Upstream model name ("*": any) -> bad-json | bad-schema | length | empty: answers a ladder escalates on
    # (sim/structured.py); requests with a response_format get JSON from the others.
    misbehave: dict[str, str] = field(default_factory=dict)


@dataclass
class SimStats:
    requests: int = 0
    in_flight: int = 0
    cancelled: int = 0  # requests whose client went away before the answer ended
    completed: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)  # last few request bodies
    headers: list[dict[str, str]] = field(default_factory=list)
