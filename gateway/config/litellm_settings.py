"""What the gateway does with each setting of a LiteLLM config: honoured, ignored (logged once at start) or refused.

The table is the migration guide's source: gateway/README.md, "LiteLLM format", is generated from it
(gateway/config/litellm_review.py) and checked against it (tests/gateway/test_litellm_config_compat.py).
The rule for each row:

- honoured: gateway/config/litellm.py translates it into the native config, with LiteLLM's meaning;
- ignored: harmless to drop (observability, UI, LiteLLM's own storage and tuning): the gateway starts and logs
  `<setting> ignored: <why>` once;
- refused: dropping it would change who may call or what is answered (auth plug-ins, guardrails, tag routing,
  budgets): the gateway does not start, and says which setting, in which file, and why. A team relying on a
  guardrail must never silently lose it.

Settings are named as LiteLLM's "All settings" page names them (https://docs.litellm.ai/docs/proxy/config_settings),
by section; `model_list[].litellm_params.<name>` rows cover one deployment's parameters. A setting not in the table
is ignored and logged as unknown to this gateway; a refused setting whose value turns it off (`false`, `[]`, `{}`)
is no refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config.litellm_callbacks import changes_calls
from gateway.config.litellm_clouds import AWS_CREDENTIAL_PARAMS

Outcome = Literal["honoured", "ignored", "refused"]


@dataclass(frozen=True, slots=True)
class Setting:
    path: str  # section.name, or model_list[].litellm_params.name
    outcome: Outcome
    why: str
    # For settings refused only for some values (a plug-in among `callbacks`): True to refuse.
    refuse_when: Callable[[Any], bool] | None = None


OBSERVABILITY = "callbacks are LiteLLM's logging integrations; the gateway writes one structured call log line " \
                "per call and serves Prometheus metrics on /metrics"
UI = "LiteLLM's admin UI is not part of the gateway"
LITELLM_DB = "LiteLLM's own database and workers are not used; the gateway keeps its llmp_* tables"
HONOURED = "read as LiteLLM reads it"
FILES = "the /files and /batches endpoints are not served (404)"
LOAD = "load is bounded by gateway.front_door.connections and per-key limits"
NO_HEALTH_CHECKS = "no background health checks: replica health comes from calls (circuit breaker)"

_H: Outcome = "honoured"
_I: Outcome = "ignored"
_R: Outcome = "refused"

SETTINGS: tuple[Setting, ...] = (
    # ---- top level ------------------------------------------------------------------------------------------
    Setting("model_list", _H, HONOURED),
    Setting("environment_variables", _H, "values used for os.environ/NAME references, as LiteLLM sets them"),
    Setting("guardrails", _R, "guardrails change what is answered; the gateway runs none, and a team relying on "
            "one must not silently lose it"),
    Setting("policies", _R, "guardrail policies change what is answered; the gateway runs none"),
    Setting("policy_attachments", _R, "guardrail policies change what is answered; the gateway runs none"),
    Setting("mcp_servers", _R, "the gateway serves no MCP tools; clients relying on them would fail"),
    Setting("mcp_builtin_servers", _R, "the gateway serves no MCP tools; clients relying on them would fail"),
    Setting("search_tools", _R, "the gateway serves no search tools; clients relying on them would fail"),
    Setting("sandbox_tools", _R, "the gateway serves no sandbox tools; clients relying on them would fail"),
    Setting("files_settings", _I, FILES),
    Setting("finetune_settings", _I, "the /fine_tuning endpoints are not served (404)"),
    # ---- litellm_settings -----------------------------------------------------------------------------------
    Setting("litellm_settings.num_retries", _H, "retries per model (router_settings.num_retries wins)"),
    Setting("litellm_settings.request_timeout", _H, "total seconds per call (router_settings.timeout wins)"),
    Setting("litellm_settings.fallbacks", _H, "fallbacks (router_settings.fallbacks wins)"),
    Setting("litellm_settings.context_window_fallbacks", _H, "context-window fallbacks (router_settings' win)"),
    Setting("litellm_settings.default_fallbacks", _H, "fallbacks for every model without its own"),
    Setting("litellm_settings.budget_exceeded_status_code", _H, "the status of budget refusals (422 by default)"),
    Setting("litellm_settings.success_callback", _I, OBSERVABILITY),
    Setting("litellm_settings.failure_callback", _I, OBSERVABILITY),
    Setting("litellm_settings.service_callback", _I, OBSERVABILITY),
    Setting("litellm_settings.callbacks", _I, OBSERVABILITY, changes_calls),
    Setting("litellm_settings.turn_off_message_logging", _I, "the gateway never logs prompts or answers"),
    Setting("litellm_settings.redact_user_api_key_info", _I, "the gateway logs a key's hash, never the key"),
    Setting("litellm_settings.langfuse_default_tags", _I, OBSERVABILITY),
    Setting("litellm_settings.set_verbose", _I, "LiteLLM's debug logging"),
    Setting("litellm_settings.json_logs", _I, "the gateway's log is always JSON lines"),
    Setting("litellm_settings.drop_params", _I, "requests are forwarded as sent; an upstream refusing a parameter "
            "answers 400 instead of LiteLLM dropping it"),
    Setting("litellm_settings.modify_params", _I, "requests are forwarded as sent"),
    Setting("litellm_settings.enable_preview_features", _I, "LiteLLM feature flag"),
    Setting("litellm_settings.force_ipv4", _I, "the gateway connects as the resolver answers"),
    Setting("litellm_settings.ssl_verify", _I, "the gateway always verifies upstream TLS certificates"),
    Setting("litellm_settings.cache", _I, "not read: the response cache is the native config's `cache:` section "
            "(gateway/README.md, Response cache)"),
    Setting("litellm_settings.cache_params", _I, "not read (see litellm_settings.cache)"),
    Setting("litellm_settings.include_cost_in_streaming_usage", _I, "usage chunks carry tokens, not cost; spend "
            "is in the ledger"),
    Setting("litellm_settings.disable_end_user_cost_tracking", _I, OBSERVABILITY),
    Setting("litellm_settings.disable_end_user_cost_tracking_prometheus_only", _I, OBSERVABILITY),
    Setting("litellm_settings.require_auth_for_metrics_endpoint", _I, "/metrics is served without auth for the "
            "cluster's Prometheus; keep it off the public ingress"),
    Setting("litellm_settings.return_response_headers", _I, "upstream headers are not relayed"),
    Setting("litellm_settings.max_parallel_requests", _I, "load is bounded by gateway.front_door.connections and "
            "per-key limits"),
    Setting("litellm_settings.default_team_settings", _I, "per-team callback settings (LiteLLM's logging)"),
    Setting("litellm_settings.guardrails", _R, "guardrails (LiteLLM's older place for them) change what is "
            "answered; the gateway runs none"),
    Setting("litellm_settings.post_call_rules", _R, "rules that reject answers change what is answered"),
    Setting("litellm_settings.custom_provider_map", _R, "custom Python providers are not run"),
    Setting("litellm_settings.global_prompt_directory", _R, "prompt management rewrites what is sent"),
    Setting("litellm_settings.global_bitbucket_config", _R, "prompt management rewrites what is sent"),
    Setting("litellm_settings.global_gitlab_config", _R, "prompt management rewrites what is sent"),
    Setting("litellm_settings.budget_reset_time", _R, "budgets reset on the gateway's own schedule"),
    Setting("litellm_settings.default_max_internal_user_budget", _H, "max_internal_user_budget when that is unset"),
    Setting("litellm_settings.priority_reservation_settings", _I, "no priority queue"),
    Setting("litellm_settings.model_group_settings", _I, "client headers are not forwarded upstream"),
    Setting("litellm_settings.audit_log_callbacks", _I, OBSERVABILITY),
    Setting("litellm_settings.s3_callback_params", _I, OBSERVABILITY),
    Setting("litellm_settings.max_ui_session_budget", _I, UI),
    Setting("litellm_settings.key_alias_pattern", _I, "key aliases are not checked against a pattern"),
    Setting("litellm_settings.responses", _I, "LiteLLM's Responses API settings; /v1/responses is not served here"),
    Setting("litellm_settings.content_policy_fallbacks", _R, "the gateway cannot tell a content-policy refusal "
            "apart; clients would get the refusal instead of the fallback's answer"),
    Setting("litellm_settings.max_budget", _R, "a proxy-wide budget; use keys' and teams' budgets"),
    Setting("litellm_settings.budget_duration", _R, "a proxy-wide budget; use keys' and teams' budgets"),
    Setting("litellm_settings.max_internal_user_budget", _H, "the max_budget of users /user/new creates with role "
            "internal_user and no budget of their own"),
    Setting("litellm_settings.internal_user_budget_duration", _H, "the budget_duration of users /user/new creates "
            "with role internal_user and none of their own"),
    Setting("litellm_settings.default_internal_user_params", _R, "defaults for users created by LiteLLM's SSO"),
    Setting("litellm_settings.key_generation_settings", _R, "restrictions on who may create keys"),
    Setting("litellm_settings.upperbound_key_generate_params", _R, "bounds on what new keys may do"),
    Setting("litellm_settings.default_key_generate_params", _R, "defaults that bound what new keys may do"),
    Setting("litellm_settings.enable_json_schema_validation", _R, "validation of answers against a schema"),
    Setting("litellm_settings.tag_budget_config", _R, "budgets per request tag"),
    Setting("litellm_settings.websearch_interception_params", _R, "web search run by the proxy changes answers"),
    Setting("litellm_settings.code_interpreter_interception_params", _R, "tool calls run by the proxy change "
            "answers"),
    Setting("litellm_settings.mcp_semantic_tool_filter", _R, "the gateway serves no MCP tools"),
    # ---- general_settings -----------------------------------------------------------------------------------
    Setting("general_settings.master_key", _H, "the admin key (else LITELLM_MASTER_KEY, as LiteLLM reads it)"),
    Setting("general_settings.database_url", _H, "keys, teams and the spend ledger (llmp_* tables)"),
    Setting("general_settings.llmp_spool_dir", _H, "the gateway's own: the spend spool directory"),
    Setting("general_settings.region", _H, "the gateway's own: the region it runs in"),
    Setting("general_settings.residency", _H, "the gateway's own: the residency zone it serves"),
    Setting("general_settings.max_request_size_mb", _H, "largest request body (gateway.front_door.body_bytes)"),
    Setting("general_settings.max_response_size_mb", _H, "largest upstream answer "
            "(gateway.upstream_limits.body_bytes)"),
    Setting("general_settings.custom_auth", _R, "a custom Python auth hook decides who may call; the gateway "
            "checks master and virtual keys only"),
    Setting("general_settings.custom_key_generate", _R, "a custom hook decides which keys may be created"),
    Setting("general_settings.custom_team_metadata_validate", _R, "a custom hook validates team metadata"),
    Setting("general_settings.enable_jwt_auth", _R, "JWT auth decides who may call; the gateway checks keys only"),
    Setting("general_settings.litellm_jwtauth", _R, "JWT auth decides who may call"),
    Setting("general_settings.enable_oauth2_auth", _R, "OAuth2 auth decides who may call"),
    Setting("general_settings.allowed_ips", _R, "an IP allow-list decides who may call"),
    Setting("general_settings.allowed_routes", _R, "a route allow-list decides what may be called"),
    Setting("general_settings.admin_only_routes", _R, "route restrictions decide who may call what"),
    Setting("general_settings.public_routes", _R, "routes served without a key would need one"),
    Setting("general_settings.enforce_user_param", _R, "LiteLLM refuses calls without `user`; the gateway would "
            "accept them"),
    Setting("general_settings.enforced_params", _R, "LiteLLM refuses calls without these params"),
    Setting("general_settings.reject_clientside_metadata_tags", _R, "tag rules decide what a client may ask"),
    Setting("general_settings.litellm_key_header_name", _R, "clients sending the key in this header would get 401"),
    Setting("general_settings.key_management_system", _R, "keys read from a secret manager LiteLLM's way; use "
            "secret/<name> references"),
    Setting("general_settings.key_management_settings", _R, "keys read from a secret manager LiteLLM's way"),
    Setting("general_settings.use_google_kms", _R, "the master key decrypted by Google KMS"),
    Setting("general_settings.use_azure_key_vault", _R, "keys read from Azure Key Vault"),
    Setting("general_settings.service_account_settings", _R, "rules on which keys may call"),
    Setting("general_settings.pass_through_endpoints", _R, "pass-through routes are not served; clients calling "
            "them would get 404"),
    Setting("general_settings.store_model_in_db", _R, "models added through LiteLLM's UI or API live in its "
            "database and would not be served; list every model in model_list"),
    Setting("general_settings.dangerously_permit_weak_or_unset_master_key", _I, "weak keys are refused at start; "
            "pass --dev for local development"),
    Setting("general_settings.fail_closed_rate_limit_enforcement", _H, "with Redis: limits fail closed when it "
            "is unreachable (redis.on_unavailable: fail-closed)"),
    Setting("general_settings.plugins", _R, "custom plug-ins may rewrite or reject calls"),
    Setting("general_settings.completion_model", _I, "a model not in model_list is a 404 naming it"),
    Setting("general_settings.max_in_flight_requests_per_worker", _I, LOAD),
    Setting("general_settings.max_queued_requests_per_worker", _I, LOAD),
    Setting("general_settings.admission_queue_timeout_seconds", _I, "no admission queue"),
    Setting("general_settings.control_plane_url", _I, UI),
    Setting("general_settings.include_call_id_in_error_body", _I, "errors carry x-request-id"),
    Setting("general_settings.enable_claude_code_gateway", _I, "not served"),
    Setting("general_settings.claude_code_gateway_managed_settings", _I, "not served"),
    Setting("general_settings.database_connect_timeout", _I, LITELLM_DB),
    Setting("general_settings.database_socket_timeout", _I, LITELLM_DB),
    Setting("general_settings.database_max_idle_connection_lifetime", _I, LITELLM_DB),
    Setting("general_settings.database_extra_connection_params", _I, LITELLM_DB),
    Setting("general_settings.database_disable_prepared_statements", _I, LITELLM_DB),
    Setting("general_settings.database_type", _I, LITELLM_DB),
    Setting("general_settings.database_args", _I, LITELLM_DB),
    Setting("general_settings.user_api_key_cache_max_size", _I, "keys.refresh_seconds"),
    Setting("general_settings.max_batch_file_size_mb", _I, FILES),
    Setting("general_settings.max_batch_file_records", _I, FILES),
    Setting("general_settings.max_batch_file_uploads_per_day", _I, FILES),
    Setting("general_settings.max_file_downloads_per_minute", _I, FILES),
    Setting("general_settings.max_file_size_mb", _I, FILES),
    Setting("general_settings.allowed_file_extensions", _I, FILES),
    Setting("general_settings.blocked_file_extensions", _I, FILES),
    Setting("general_settings.proxy_config_reload_interval_seconds", _I, "read at start; roll out to change"),
    Setting("general_settings.cancel_on_disconnect", _I, "always, as the gateway does"),
    Setting("general_settings.health_check_concurrency", _I, NO_HEALTH_CHECKS),
    Setting("general_settings.health_check_skip_disabled_background_models", _I, NO_HEALTH_CHECKS),
    Setting("general_settings.background_health_check_model_groups", _I, NO_HEALTH_CHECKS),
    Setting("general_settings.model_list_healthy_only", _I, "/v1/models lists every configured model"),
    Setting("general_settings.alerting_args", _I, "LiteLLM's alerts"),
    Setting("general_settings.max_failed_login_attempts_per_source", _I, UI),
    Setting("general_settings.max_failed_login_attempts_per_source_overrides", _I, UI),
    Setting("general_settings.failed_login_window_seconds", _I, UI),
    Setting("general_settings.failed_login_block_seconds", _I, UI),
    Setting("general_settings.vector_store_deny_by_default", _I, "vector stores are not served"),
    Setting("general_settings.search_tool_deny_by_default", _I, "search tools are refused"),
    Setting("general_settings.missing_session_id", _I, OBSERVABILITY),
    Setting("general_settings.enable_public_model_hub", _I, UI),
    Setting("general_settings.pass_through_request_timeout", _I, "pass-through endpoints are refused"),
    Setting("general_settings.responses_websocket_session_limit_seconds", _I, "not served"),
    Setting("general_settings.enable_openai_websocket_passthrough", _I, "the realtime websocket is not served"),
    Setting("general_settings.transcribe_media_buckets", _I, "not served"),
    Setting("general_settings.user_header_mappings", _I, OBSERVABILITY),
    Setting("general_settings.supported_db_objects", _I, LITELLM_DB),
    Setting("general_settings.user_mcp_management_mode", _I, "the gateway serves no MCP tools"),
    Setting("general_settings.store_prompts_in_spend_logs", _I, "the gateway never stores prompts or answers"),
    Setting("general_settings.spend_logs_metadata_fields", _I, LITELLM_DB),
    Setting("general_settings.disable_auto_add_proxy_admin_to_teams", _I, UI),
    Setting("general_settings.enforce_fallback_model_access", _I, "body fallbacks: always checked"),
    Setting("general_settings.scheduled_job_stagger", _I, LITELLM_DB),
    Setting("general_settings.spend_capture_rate_check", _I, LITELLM_DB),
    Setting("general_settings.maximum_autorouter_session_retention_period", _I, LITELLM_DB),
    Setting("general_settings.maximum_health_check_retention_period", _I, LITELLM_DB),
    Setting("general_settings.maximum_daily_tag_spend_retention_period", _I, LITELLM_DB),
    Setting("general_settings.use_spend_logs_partitioning", _I, LITELLM_DB),
    Setting("general_settings.maximum_spend_logs_cleanup_batch_size", _I, LITELLM_DB),
    Setting("general_settings.maximum_spend_logs_cleanup_max_batches", _I, LITELLM_DB),
    Setting("general_settings.maximum_spend_logs_cleanup_run_budget", _I, LITELLM_DB),
    Setting("general_settings.maximum_spend_logs_cleanup_batch_timeout", _I, LITELLM_DB),
    Setting("general_settings.disable_spend_logs", _I, "the gateway's spend ledger is always written"),
    Setting("general_settings.disable_master_key_return", _I, UI),
    Setting("general_settings.disable_prisma_schema_update", _I, LITELLM_DB),
    Setting("general_settings.disable_reset_budget", _I, LITELLM_DB),
    Setting("general_settings.disable_adding_master_key_hash_to_db", _I, LITELLM_DB),
    Setting("general_settings.proxy_batch_write_at", _I, LITELLM_DB),
    Setting("general_settings.proxy_budget_rescheduler_min_time", _I, LITELLM_DB),
    Setting("general_settings.proxy_budget_rescheduler_max_time", _I, LITELLM_DB),
    Setting("general_settings.database_connection_pool_limit", _I, LITELLM_DB),
    Setting("general_settings.database_connection_timeout", _I, LITELLM_DB),
    Setting("general_settings.allow_requests_on_db_unavailable", _I, "the gateway's hot path never waits on the "
            "database (keys are cached, spend is spooled)"),
    Setting("general_settings.use_redis_transaction_buffer", _I, LITELLM_DB),
    Setting("general_settings.coordination_redis", _I, LITELLM_DB),
    Setting("general_settings.maximum_spend_logs_retention_period", _I, LITELLM_DB),
    Setting("general_settings.spend_report_frequency", _I, LITELLM_DB),
    Setting("general_settings.alerting", _I, "LiteLLM's Slack/email alerts; alert on the gateway's metrics"),
    Setting("general_settings.alerting_threshold", _I, "LiteLLM's alerts"),
    Setting("general_settings.alert_types", _I, "LiteLLM's alerts"),
    Setting("general_settings.alert_to_webhook_url", _I, "LiteLLM's alerts"),
    Setting("general_settings.background_health_checks", _I, "replica health comes from calls and the circuit "
            "breaker, and /health/ready"),
    Setting("general_settings.health_check_interval", _I, "no background health checks (see above)"),
    Setting("general_settings.health_check_details", _I, NO_HEALTH_CHECKS),
    Setting("general_settings.otel", _I, OBSERVABILITY),
    Setting("general_settings.debug", _I, "LiteLLM's debug logging"),
    Setting("general_settings.ui_access_mode", _I, UI),
    Setting("general_settings.infer_model_from_keys", _I, "models come from model_list"),
    Setting("general_settings.max_parallel_requests", _I, "see litellm_settings.max_parallel_requests"),
    Setting("general_settings.global_max_parallel_requests", _I, "see litellm_settings.max_parallel_requests"),
    Setting("general_settings.forward_openai_org_id", _I, "client headers are not forwarded upstream"),
    Setting("general_settings.forward_client_headers_to_llm_api", _I, "client headers are not forwarded upstream"),
    Setting("general_settings.user_header_name", _I, OBSERVABILITY),
    Setting("general_settings.team_metadata_validation_error_message", _I, "with custom_team_metadata_validate"),
    Setting("general_settings.team_metadata_validation_timeout", _I, "with custom_team_metadata_validate"),
    # ---- router_settings ------------------------------------------------------------------------------------
    Setting("router_settings.routing_strategy", _H, "simple-shuffle -> weighted; the others -> least-busy"),
    Setting("router_settings.num_retries", _H, HONOURED),
    Setting("router_settings.timeout", _H, "total seconds per call"),
    Setting("router_settings.fallbacks", _H, HONOURED),
    Setting("router_settings.context_window_fallbacks", _H, "tried on the upstream's context-length error"),
    Setting("router_settings.default_fallbacks", _H, "fallbacks for every model without its own"),
    Setting("router_settings.allowed_fails", _H, "failures a replica may have before it cools down (the "
            "circuit opens on the next one, as LiteLLM's `fails > allowed_fails`)"),
    Setting("router_settings.cooldown_time", _H, "seconds a failed replica is left alone"),
    Setting("router_settings.model_group_alias", _H, "another name for a model; `hidden: true` keeps it off "
            "/v1/models"),
    Setting("router_settings.redis_host", _H, "with database_url: limits shared through this Redis"),
    Setting("router_settings.redis_port", _H, HONOURED),
    Setting("router_settings.redis_password", _H, HONOURED),
    Setting("router_settings.redis_url", _H, "with database_url: limits shared through this Redis"),
    Setting("router_settings.redis_db", _H, "the Redis database number"),
    Setting("router_settings.default_litellm_params", _H, "OpenAI request fields in it are defaults for every "
            "deployment, over the deployment's own, under the client's (LiteLLM's setdefault into the call)"),
    Setting("router_settings.search_tools", _R, "the gateway serves no search tools; clients relying on them would "
            "fail"),
    Setting("router_settings.guardrail_list", _R, "guardrails change what is answered; the gateway runs none"),
    Setting("router_settings.plugins", _R, "custom router plug-ins may rewrite or reject calls"),
    Setting("router_settings.tag_routing_prefix", _R, "tag routing (see enable_tag_filtering)"),
    Setting("router_settings.routing_groups", _R, "names clients call that map to groups of models; they would "
            "stop working"),
    Setting("router_settings.assistants_config", _I, "the /assistants endpoints are not served (404)"),
    Setting("router_settings.cache_kwargs", _I, "no response cache"),
    Setting("router_settings.default_priority", _I, "no priority queue: calls are served as they come"),
    Setting("router_settings.alerting_config", _I, "LiteLLM's alerts"),
    Setting("router_settings.router_general_settings", _I, "LiteLLM's router tuning"),
    Setting("router_settings.deployment_affinity_ttl_seconds", _I, "the gateway's own session and prefix affinity "
            "applies (gateway.affinity)"),
    Setting("router_settings.model_group_affinity_config", _I, "the gateway's own affinity applies"),
    Setting("router_settings.ignore_invalid_deployments", _I, "an invalid deployment is a start-up error naming it"),
    Setting("router_settings.enable_health_check_routing", _I, "replica health comes from calls (circuit breaker)"),
    Setting("router_settings.health_check_staleness_threshold", _I, NO_HEALTH_CHECKS),
    Setting("router_settings.health_check_ignore_transient_errors", _I, NO_HEALTH_CHECKS),
    Setting("router_settings.background_health_check_model_groups", _I, NO_HEALTH_CHECKS),
    Setting("router_settings.enable_weighted_failover", _I, "failover follows the gateway's order: region, tier, "
            "fallbacks"),
    Setting("router_settings.fallback_access_check", _I, "request-body fallbacks are always checked against the "
            "key; configured fallbacks are the operator's choice"),
    Setting("router_settings.fallback_budget_check", _I, "a fallback's spend is charged to the caller's budgets"),
    Setting("router_settings.auto_router_capability_limit", _I, "auto_router models are refused"),
    Setting("router_settings.content_policy_fallbacks", _R, "see litellm_settings.content_policy_fallbacks"),
    Setting("router_settings.enable_tag_filtering", _R, "tag routing keeps calls off deployments not tagged for "
            "them; without it they would reach any deployment"),
    Setting("router_settings.tag_filtering_match_any", _R, "tag routing (see enable_tag_filtering)"),
    Setting("router_settings.provider_budget_config", _R, "provider budgets stop routing to a provider over "
            "budget; without them spend would not stop"),
    Setting("router_settings.enable_pre_call_checks", _I, "a prompt over a deployment's context window is sent, "
            "and its context-length error triggers context_window_fallbacks"),
    Setting("router_settings.optional_pre_call_checks", _I, "see enable_pre_call_checks"),
    Setting("router_settings.retry_policy", _I, "the gateway retries connect errors, 429 and 5xx; never a 4xx"),
    Setting("router_settings.model_group_retry_policy", _I, "see retry_policy"),
    Setting("router_settings.allowed_fails_policy", _I, "one allowed_fails for every error kind"),
    Setting("router_settings.routing_strategy_args", _I, "tuning of LiteLLM's strategies"),
    Setting("router_settings.cache_responses", _I, "no response cache"),
    Setting("router_settings.caching_groups", _I, "no response cache"),
    Setting("router_settings.client_ttl", _I, "upstream connections are pooled by the gateway"),
    Setting("router_settings.polling_interval", _I, "LiteLLM's internal polling"),
    Setting("router_settings.max_fallbacks", _I, "every listed fallback is tried"),
    Setting("router_settings.stream_timeout", _I, "use litellm_params.stream_timeout per deployment"),
    Setting("router_settings.retry_after", _I, "retries back off exponentially and honour Retry-After"),
    Setting("router_settings.disable_cooldowns", _I, "replicas always cool down after repeated failures"),
    Setting("router_settings.default_max_parallel_requests", _I, "see litellm_settings.max_parallel_requests"),
    Setting("router_settings.set_verbose", _I, "LiteLLM's debug logging"),
    Setting("router_settings.debug_level", _I, "LiteLLM's debug logging"),
    # ---- one deployment: model_list[].litellm_params ---------------------------------------------------------
    Setting("model_list[].model_info.id", _H, "the deployment's name in logs and metrics"),
    Setting("model_list[].model_info.residency", _H, "the gateway's own: the deployment's residency zone"),
    Setting("model_list[].model_info.input_cost_per_token", _H, "price for the spend ledger"),
    Setting("model_list[].model_info.output_cost_per_token", _H, "price for the spend ledger"),
    Setting("model_list[].model_info.output_cost_per_image", _H, "price per image of an images answer without "
            "usage (dall-e-2/3)"),
    Setting("model_list[].model_info.mode", _I, "the endpoint a client calls decides"),
    Setting("model_list[].model_info.base_model", _I, "prices come from input/output_cost_per_token"),
    Setting("model_list[].model_info.max_tokens", _I, "context limits are the upstream's (its context-length error "
            "triggers context_window_fallbacks)"),
    Setting("model_list[].model_info.max_input_tokens", _I, "see model_info.max_tokens"),
    Setting("model_list[].model_info.access_groups", _I, "keys are given models by name; a key naming an access "
            "group is refused its calls (403), never given more"),
    Setting("model_list[].litellm_params.model", _H, "<provider>/<model>; a bare name is OpenAI's, as in LiteLLM"),
    Setting("model_list[].litellm_params.api_base", _H, HONOURED),
    Setting("model_list[].litellm_params.api_key", _H, HONOURED),
    Setting("model_list[].litellm_params.rpm", _H, "the deployment's quota"),
    Setting("model_list[].litellm_params.tpm", _H, "the deployment's quota"),
    Setting("model_list[].litellm_params.weight", _H, "share of traffic under simple-shuffle"),
    Setting("model_list[].litellm_params.timeout", _H, "total seconds"),
    Setting("model_list[].litellm_params.stream_timeout", _H, "idle seconds between stream chunks"),
    Setting("model_list[].litellm_params.region_name", _H, "the deployment's region (and residency zone)"),
    Setting("model_list[].litellm_params.input_cost_per_token", _H, "price for the spend ledger"),
    Setting("model_list[].litellm_params.output_cost_per_token", _H, "price for the spend ledger"),
    Setting("model_list[].litellm_params.output_cost_per_image", _H, "price per image of an images answer "
            "without usage (dall-e-2/3)"),
    Setting("model_list[].litellm_params.max_retries", _I, "the gateway's num_retries apply"),
    Setting("model_list[].litellm_params.organization", _I, "OpenAI organization header is not sent"),
    Setting("model_list[].litellm_params.tags", _I, "tags only matter with tag routing, which is refused"),
    Setting("model_list[].litellm_params.api_version", _H, "Azure's api-version query parameter"),
    *(Setting(f"model_list[].litellm_params.{n}", _H, "Azure's Entra ID credentials (gateway/upstream/azure_auth.py)")
      for n in ("azure_ad_token", "tenant_id", "client_id", "client_secret")),
    Setting("model_list[].litellm_params.aws_region_name", _H, "the region Bedrock calls are signed for"),
    Setting("model_list[].litellm_params.aws_bedrock_runtime_endpoint", _H, "Bedrock's endpoint (a VPC endpoint)"),
    *(Setting(f"model_list[].litellm_params.{n}", _R, "the gateway signs Bedrock calls with its own AWS credentials "
              "(the pod's IAM role, or the environment on a laptop); remove it") for n in AWS_CREDENTIAL_PARAMS),
    Setting("model_list[].litellm_params.extra_body", _I, "not merged into requests"),
    Setting("model_list[].litellm_params.mock_response", _R, "LiteLLM answers with this text instead of the model"),
)

# OpenAI request fields a deployment's litellm_params may carry: LiteLLM merges them into each call with
# `{**litellm_params, ..., **kwargs}` (litellm/router.py, Router._acompletion, 1.106.2): the client's value wins.
REQUEST_DEFAULTS = frozenset({
    "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens", "presence_penalty",
    "frequency_penalty", "logit_bias", "seed", "response_format", "tools", "tool_choice", "parallel_tool_calls",
    "logprobs", "top_logprobs", "user", "reasoning_effort",
})
for _name in sorted(REQUEST_DEFAULTS):
    SETTINGS += (Setting(f"model_list[].litellm_params.{_name}", _H, "a default for each call; the client's "
                         "value wins, as in LiteLLM"),)

BY_PATH = {s.path: s for s in SETTINGS}
