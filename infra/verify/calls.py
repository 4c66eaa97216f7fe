"""Calls to the deployed gateways over HTTPS (httpx2, the HTTP client the official `openai` client is built on):
readiness and stores, a chat call, session affinity, and the refusal of a model restricted to another zone.

Every request has one timeout for connect, write, read and pool (httpx2.Timeout), is not retried, and its
failures become a FAIL line naming the host. The key goes in the Authorization header only: no line, error or
JSON output ever holds it.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from infra.verify.results import Check, failed, passed

# The gateway's own headers and codes this module relies on (not imported: the infra extra installs no gateway
# dependencies; tests/infra/test_verify.py holds them equal): session affinity is keyed on `x-session-id`
# (gateway/http/handlers.py `_session_key`), the replica that served is named in `x-llmp-replica`
# (gateway/upstream/routing.py REPLICA_HEADER), and a model only another zone serves is answered 421 with
# this code (gateway/http/errors.py `misdirected`, gateway/config/other_zones.py).
REPLICA_HEADER = "x-llmp-replica"
SESSION_HEADER = "x-session-id"
OTHER_ZONE_CODE = "model_in_other_residency_zone"
SESSION_CALLS = 4
MAX_TOKENS = 4
PROMPT = [{"role": "user", "content": "Reply with the word ok."}]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: Any  # the JSON body, or None when it was not JSON


class Endpoints:
    """DNS name -> base URL: https://<name>, or what `--endpoint NAME=URL` says (a proxy, a test server)."""

    def __init__(self, overrides: dict[str, str]) -> None:
        self.overrides = {name.lower(): url.rstrip("/") for name, url in overrides.items()}

    def url(self, host: str) -> str:
        return self.overrides.get(host.lower(), f"https://{host}")


class Gateways:
    """An HTTP client for verify's calls; `key` is sent, never shown."""

    def __init__(self, endpoints: Endpoints, key: str, timeout: float) -> None:
        self.endpoints = endpoints
        self._key = key
        self.client = httpx2.Client(timeout=httpx2.Timeout(timeout), follow_redirects=False)

    def close(self) -> None:
        self.client.close()

    def get(self, host: str, path: str) -> Answer:
        return _answer(self.client.get(self.endpoints.url(host) + path))

    def chat(self, host: str, model: str, session: str | None = None) -> Answer:
        headers = {"Authorization": f"Bearer {self._key}"}
        if session is not None:
            headers[SESSION_HEADER] = session
        body = {"model": model, "messages": PROMPT, "max_tokens": MAX_TOKENS}
        return _answer(self.client.post(self.endpoints.url(host) + "/v1/chat/completions", json=body,
                                        headers=headers))

    def where(self, host: str) -> str:
        return self.endpoints.url(host)


def _answer(resp: httpx2.Response) -> Answer:
    try:
        body = resp.json()
    except ValueError:
        body = None
    return Answer(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, body)


def _error(answer: Answer) -> str:
    """A refusal's message (OpenAI's error shape), short."""
    error = answer.body.get("error") if isinstance(answer.body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f"answered {answer.status}" + (f": {str(message)[:200]}" if message else "")


def _guarded(group: str, name: str, gateways: Gateways, host: str, check: Callable[[], Check]) -> Check:
    """`check()`, or a FAIL naming the host when it could not be reached in time."""
    try:
        return check()
    except httpx2.TimeoutException as exc:
        return failed(group, name, f"{gateways.where(host)} did not answer in time ({type(exc).__name__})")
    except httpx2.HTTPError as exc:
        return failed(group, name, f"{gateways.where(host)} unreachable ({type(exc).__name__}: {str(exc)[:160]})")


def health(gateways: Gateways, group: str, host: str) -> Check:
    """/health/ready answers 200 and reports Redis and the ledger connected (gateway/governance/store_health.py)."""
    name = f"readiness of {host}"

    def check() -> Check:
        answer = gateways.get(host, "/health/ready")
        if answer.status != 200:
            return failed(group, name, f"/health/ready answered {answer.status}")
        stores = answer.body.get("stores") if isinstance(answer.body, dict) else None
        if not isinstance(stores, dict):
            return failed(group, name, "200, but no stores reported: this gateway runs without Redis and a ledger "
                                       "(limits per replica, no virtual keys or spend)")
        states = {s: (stores.get(s) or {}) for s in ("redis", "ledger")}
        down = [f"{s} {st.get('status', 'not reported')}" + (f" ({st['error']})" if st.get("error") else "")
                for s, st in states.items() if st.get("status") != "connected"]
        if down:
            return failed(group, name, "200, but " + "; ".join(down))
        return passed(group, name, "200; redis connected, ledger connected")

    return _guarded(group, name, gateways, host, check)


def chat(gateways: Gateways, group: str, host: str, model: str) -> Check:
    name = f"chat via {host}"

    def check() -> Check:
        answer = gateways.chat(host, model)
        choices = answer.body.get("choices") if isinstance(answer.body, dict) else None
        if answer.status != 200 or not choices:
            return failed(group, name, f"{model}: {_error(answer)}")
        served = answer.headers.get(REPLICA_HEADER)
        return passed(group, name, f"{model} answered 200" + (f" (replica {served})" if served else ""))

    return _guarded(group, name, gateways, host, check)


def session(gateways: Gateways, group: str, host: str, model: str) -> Check:
    """SESSION_CALLS calls with one session id are all served by one replica (the gateway's bounded-load
    consistent hashing, gateway/upstream/hashring.py), as REPLICA_HEADER on each answer says."""
    name = f"session affinity via {host}"
    session_id = f"llmp-verify-{uuid.uuid4().hex}"

    def check() -> Check:
        served: list[str] = []
        for _ in range(SESSION_CALLS):
            answer = gateways.chat(host, model, session_id)
            if answer.status != 200:
                return failed(group, name, f"{model}: {_error(answer)}")
            replica = answer.headers.get(REPLICA_HEADER)
            if replica is None:
                return failed(group, name, f"no {REPLICA_HEADER} header on the answer: the gateway's image is "
                                           "older than this check")
            served.append(replica)
        if len(set(served)) > 1:
            return failed(group, name, f"{model}: one session moved between replicas: {', '.join(served)}")
        return passed(group, name, f"{model}: {SESSION_CALLS} calls, all on replica {served[0]}")

    return _guarded(group, name, gateways, host, check)


def refused_outside_zone(gateways: Gateways, group: str, host: str, model: str, zone: str) -> Check:
    """A model restricted to `zone` called on a gateway outside it: 421 with the zone's own name, never served."""
    name = f"{model} refused outside zone {zone}"

    def check() -> Check:
        answer = gateways.chat(host, model)
        if answer.status == 200:
            return failed(group, name, f"{host} served it (200): a model restricted to {zone} answered outside it")
        error = answer.body.get("error") if isinstance(answer.body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if answer.status == 421 and code == OTHER_ZONE_CODE:
            return passed(group, name, f"421 {code}")
        return failed(group, name, f"expected 421 {OTHER_ZONE_CODE}, {_error(answer)}")

    return _guarded(group, name, gateways, host, check)
