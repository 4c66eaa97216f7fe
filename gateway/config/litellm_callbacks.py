"""Which LiteLLM `callbacks` only observe calls (ignored, logged) and which may change them (refused)."""

from __future__ import annotations

from typing import Any

# `callbacks` entries that only observe calls: LiteLLM's logging integrations (litellm/__init__.py
# _custom_logger_compatible_callbacks_literal, 1.106.2, less its hooks that change calls: dynamic_rate_limiter*,
# anthropic_cache_control_hook, vector_store_pre_call_hook, compression_interception, dotprompt, bitbucket, gitlab,
# litellm_agent) and the older logging names of its docs. Anything else (a guardrail such as `presidio` or
# `lakera_prompt_injection`, an interception, a Python object path) may rewrite or reject calls.
LOGGING_CALLBACKS = frozenset({
    "lago", "openmeter", "logfire", "literalai", "langsmith", "prometheus", "otel", "datadog", "datadog_metrics",
    "datadog_llm_observability", "galileo", "braintrust", "arize", "arize_phoenix", "langtrace", "gcs_bucket",
    "azure_storage", "opik", "argilla", "mlflow", "langfuse", "langfuse_otel", "weave_otel", "pagerduty",
    "humanloop", "azure_sentinel", "gcs_pubsub", "agentops", "generic_api", "resend_email", "sendgrid_email",
    "smtp_email", "deepeval", "s3_v2", "clickhouse", "pointfive", "zerobus", "aws_sqs", "cloudzero", "focus",
    "mavvrik", "vantage", "posthog", "levo", "newrelic", "signoz",
    "sentry", "lunary", "helicone", "athina", "slack", "s3", "dynamodb", "supabase", "traceloop", "greenscale",
    "wandb", "promptlayer", "cloudwatch", "email",
})


def changes_calls(value: Any) -> bool:
    """A `callbacks` value naming anything but logging integrations: a plug-in that may rewrite or reject calls."""
    entries = value if isinstance(value, list) else [value]
    return any(not (isinstance(e, str) and e in LOGGING_CALLBACKS) for e in entries)
