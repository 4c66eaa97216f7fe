"""The client request, parsed once, and the body each upstream protocol is sent for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.protocols.anthropic_clients import check_messages, messages_to_chat
from gateway.protocols.anthropic_upstream import BadShape, check_chat, to_messages_request
from gateway.protocols.bedrock_converse import to_converse_request
from gateway.upstream.routing import DeploymentPool, ModelRoute


def check_shape(endpoint: str, body: dict[str, Any]) -> None:
    """At parse time: the types of the Messages fields the gateway reads or converts; raises BadShape naming one.
    Chat requests are checked only when they are converted (`_build`): passed through, the upstream judges them,
    and the hot path pays nothing (a 2-message check costs about 5 us here)."""
    if endpoint == "messages":
        check_messages(body)


@dataclass(slots=True)
class Request:
    """A client request, parsed once: the raw bytes and the few fields the gateway reads."""

    endpoint: str  # chat | completions | embeddings | messages (Anthropic's API, inbound)
    raw: bytes
    body: dict[str, Any]
    alias: str
    stream: bool
    wants_usage: bool  # the client asked for stream_options.include_usage
    hopped: bool = False  # passed on by another region's gateway (routing.HOP_HEADER)
    _payloads: dict[tuple[str, str, int | None, str], bytes] = field(default_factory=dict)

    def payload_for(self, dep: DeploymentPool, route: ModelRoute) -> bytes:
        key = (dep.provider, route.upstream_model(dep, self.alias), route.max_tokens, dep.name if dep.defaults else "")
        cached = self._payloads.get(key)
        if cached is None:
            try:
                cached = self._payloads[key] = self._build(dep, route)
            except BadShape:
                raise
            except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
                # A shape check_shape let through: still the request's fault, never a 500 of ours.
                raise BadShape("messages", f"could not be converted for deployment {dep.name} ({type(exc).__name__}: "
                               f"{exc})"[:300]) from None
        return cached

    def _build(self, dep: DeploymentPool, route: ModelRoute) -> bytes:
        body = self.body
        model = route.upstream_model(dep, self.alias)
        if self.endpoint == "messages":
            return self._build_messages(dep, route, model)
        if dep.defaults and self.endpoint != "embeddings":
            # LiteLLM's `{**litellm_params, **kwargs}`: a deployment's defaults, the client's fields over them.
            body = {**dep.defaults, **body}
        if "fallbacks" in body:  # the gateway's to act on (upstream/fallbacks.py), never the upstream's
            body = {k: v for k, v in body.items() if k != "fallbacks"}
        if dep.provider == "anthropic":
            check_chat(body)
            return orjson.dumps(to_messages_request(body, model, route.max_tokens))
        if dep.provider == "bedrock":
            check_chat(body)
            return orjson.dumps(to_converse_request(body, route.max_tokens))
        changes: dict[str, Any] = {}
        if body is not self.body:
            changes["model"] = model  # the body was rebuilt: never forwarded untouched
        if body.get("model") != model:
            changes["model"] = model
        cap = route.max_tokens
        if cap is not None and self.endpoint != "embeddings":
            key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            asked = body.get(key)
            # Chat answers run to the context limit when no max is given: the cap applies then too.
            if (asked is None and self.endpoint == "chat") or (isinstance(asked, int) and asked > cap):
                changes[key] = cap
        if self.stream and not self.wants_usage:
            # Meter tokens even when the client did not ask; the usage chunk is stripped on the way back.
            changes["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if not changes:
            return self.raw  # forwarded untouched
        return orjson.dumps({**body, **changes})

    def _build_messages(self, dep: DeploymentPool, route: ModelRoute, model: str) -> bytes:
        body, cap = self.body, route.max_tokens
        if "fallbacks" in body:  # the gateway's to act on (upstream/fallbacks.py), never the upstream's
            body = {k: v for k, v in body.items() if k != "fallbacks"}
        if dep.provider == "bedrock":
            return orjson.dumps(to_converse_request(messages_to_chat(body, model, cap), cap))
        if dep.provider != "anthropic":
            return orjson.dumps(messages_to_chat(body, model, cap))
        changes: dict[str, Any] = {}
        if body.get("model") != model or body is not self.body:
            changes["model"] = model
        if cap is not None and body.get("max_tokens", cap + 1) > cap:
            changes["max_tokens"] = cap
        return orjson.dumps({**body, **changes}) if changes else self.raw
