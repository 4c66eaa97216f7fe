"""Calls to the deployed gateways over HTTPS (httpx2, the HTTP client the official `openai` client is built on):
readiness and stores, a chat call, session affinity, and the refusal of a model restricted to another zone.

Every request has one timeout for connect, write, read and pool (httpx2.Timeout), is not retried, and its
failures become a FAIL line naming the host. The key goes in the Authorization header only: no line, error or
JSON output ever holds it.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import httpx2

from infra.verify.results import Check, failed, not_judged, passed

# The gateway's own headers and codes this module relies on (not imported: the infra extra installs no gateway
# dependencies; tests/infra/test_verify.py holds them equal): session affinity is keyed on `x-session-id`
# (gateway/http/handlers.py `_session_key`), the replica that served is named in `x-llmp-replica`
# (gateway/upstream/routing.py REPLICA_HEADER), the deployment that answered and the fallbacks tried in
# LiteLLM's `x-litellm-model-id` and `x-litellm-attempted-fallbacks` (gateway/http/litellm_headers.py), and a
# model only another zone serves is answered 421 with this code (gateway/http/errors.py `misdirected`,
# gateway/config/other_zones.py).
REPLICA_HEADER = "x-llmp-replica"
SESSION_HEADER = "x-session-id"
DEPLOYMENT_HEADER = "x-litellm-model-id"
FALLBACKS_HEADER = "x-litellm-attempted-fallbacks"
OTHER_ZONE_CODE = "model_in_other_residency_zone"
SESSION_CALLS = 4  # calls per session id, each with its own prompt (the prefix key must not stand in for it)
MIN_SESSIONS, MAX_SESSIONS = 3, 12  # session ids: at least 3, more until two replicas are seen (2**-11 to miss two)
MAX_TOKENS = 4


def prompt(n: int) -> list[dict[str, str]]:
    """A different prompt for each call: with one prompt, the gateway's prompt-prefix key (used when a call has
    no session id) would put every call on one replica too, and the session check could not fail."""
    # The distinct part comes first: the prefix key reads only the prompt's first characters.
    return [{"role": "user", "content": f"{uuid.uuid4().hex[:12]} {n}: reply with the word ok."}]


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

    def chat(self, host: str, model: str, session: str | None = None, n: int = 0) -> Answer:
        headers = {"Authorization": f"Bearer {self._key}"}
        if session is not None:
            headers[SESSION_HEADER] = session
        body = {"model": model, "messages": prompt(n), "max_tokens": MAX_TOKENS}
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


# Said with every session result: the ring is allowed to move a session, so a move under load is not a fault.
BOUNDED_LOAD = ("under heavy load the gateway's bounded-load ring moves a session off a full replica on purpose "
                "(gateway/upstream/hashring.py): judge affinity when the region is quiet")


def _error(answer: Answer) -> tuple[str | None, str]:
    """A refusal's code, and its message (OpenAI's error shape) in short."""
    error = answer.body.get("error") if isinstance(answer.body, dict) else None
    fields = error if isinstance(error, dict) else {}
    code, message = fields.get("code"), fields.get("message")
    return (str(code) if code is not None else None,
            f"answered {answer.status}" + (f": {str(message)[:200]}" if message else ""))


def _guarded(group: str, name: str, gateways: Gateways, host: str, check: Callable[[], Check]) -> Check:
    """`check()`, or a FAIL naming the host when it could not be reached in time or its URL is not one."""
    try:
        return check()
    except httpx2.TimeoutException as exc:
        return failed(group, name, f"{gateways.where(host)} did not answer in time ({type(exc).__name__})")
    except httpx2.HTTPError as exc:
        return failed(group, name, f"{gateways.where(host)} unreachable ({type(exc).__name__}: {str(exc)[:160]})")
    except (httpx2.InvalidURL, ValueError) as exc:  # httpx2 raises InvalidURL for a URL it cannot parse
        return failed(group, name, f"{gateways.where(host)} is not a URL verify can call ({str(exc)[:160]})")


def _not_served_here(answer: Answer, own: Collection[str]) -> str | None:
    """Why `answer` is not a chat answer from one of the `own` deployments without a fallback; None when it is.
    /health/ready and a 200 alone would pass a region whose model servers are all down (a hosted fallback or
    another region answers for them)."""
    choices = answer.body.get("choices") if isinstance(answer.body, dict) else None
    if answer.status != 200 or not choices:
        return _error(answer)[1]
    deployment = answer.headers.get(DEPLOYMENT_HEADER)
    if deployment not in own:
        return f"answered by deployment {deployment or '(not named)'}, not {' or '.join(sorted(own))}"
    fallbacks = answer.headers.get(FALLBACKS_HEADER)
    if fallbacks != "0":
        return f"answered after {fallbacks or 'unreported'} fallback(s) ({FALLBACKS_HEADER})"
    return None


def _deployments(answer: Answer) -> dict[str, Any]:
    found = answer.body.get("deployments") if isinstance(answer.body, dict) else None
    return found if isinstance(found, dict) else {}


def _deployment_problem(deployments: dict[str, Any], name: str, floor: int) -> str | None:
    entry = deployments.get(name)
    if not isinstance(entry, dict):
        return f"deployment {name} not reported"
    replicas = entry.get("replicas")
    if entry.get("healthy") is not True:
        return f"deployment {name} unhealthy"
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < floor:
        return f"deployment {name} has {replicas!r} replica(s), floor {floor}"
    return None


def _store_problem(store: str, state: object) -> str | None:
    if not isinstance(state, dict):
        return f"{store} reported as {str(state)[:40]!r}, not a status"
    if state.get("status") == "connected":
        return None
    error = state.get("error")
    return f"{store} {state.get('status', 'not reported')}" + (f" ({str(error)[:120]})" if error else "")


def health(gateways: Gateways, group: str, host: str, own: dict[str, int]) -> Check:
    """/health/ready answers 200, the region's `own` deployments (name -> floor) are healthy with at least their
    floor of replicas (the gateway is ready when any deployment is usable, a hosted one or another region's:
    state.py `readiness`), and Redis and the ledger are connected (gateway/governance/store_health.py)."""
    name = f"readiness of {host}"

    def check() -> Check:
        answer = gateways.get(host, "/health/ready")
        if answer.status != 200:
            return failed(group, name, f"/health/ready answered {answer.status}")
        deployments = _deployments(answer)
        problems = [p for dep, floor in sorted(own.items()) if (p := _deployment_problem(deployments, dep, floor))]
        stores = answer.body.get("stores") if isinstance(answer.body, dict) else None
        if not isinstance(stores, dict):
            problems.append("no stores reported: this gateway runs without Redis and a ledger (limits per replica, "
                            "no virtual keys or spend)")
        else:
            problems += [p for s in ("redis", "ledger") if (p := _store_problem(s, stores.get(s, {})))]
        if problems:
            return failed(group, name, "200, but " + "; ".join(problems))
        return passed(group, name, f"200; {len(own)} own deployment(s) at their floor; redis connected, "
                                   "ledger connected")

    return _guarded(group, name, gateways, host, check)


def chat(gateways: Gateways, group: str, host: str, model: str, own: Collection[str]) -> Check:
    """One chat call answered by one of the `own` deployments (x-litellm-model-id), with no fallback."""
    name = f"chat via {host}"

    def check() -> Check:
        answer = gateways.chat(host, model)
        problem = _not_served_here(answer, own)
        if problem is not None:
            return failed(group, name, f"{model}: {problem}")
        served = answer.headers.get(REPLICA_HEADER)
        return passed(group, name, f"{model} answered 200 by {answer.headers[DEPLOYMENT_HEADER]}"
                                   + (f" (replica {served})" if served else ""))

    return _guarded(group, name, gateways, host, check)


def session(gateways: Gateways, group: str, host: str, model: str, deployment: str) -> Check:
    """Several session ids, SESSION_CALLS calls each with its own prompt: each session stays on one replica of
    the region's own `deployment` (the gateway's bounded-load consistent hashing, gateway/upstream/hashring.py),
    and the sessions together reach two replicas or more, as REPLICA_HEADER on each answer says. Not judged
    when the deployment has fewer than two replicas: one replica serves every session whatever the gateway does."""
    name = f"session affinity via {host}"

    def check() -> Check:
        entry = _deployments(gateways.get(host, "/health/ready")).get(deployment)
        replicas = entry.get("replicas") if isinstance(entry, dict) else None
        if not isinstance(replicas, int) or replicas < 2:
            return not_judged(group, name, f"{model}: deployment {deployment} has {replicas or 0} replica(s); "
                                           "affinity shows only with 2 or more")
        placed: list[str] = []
        while len(placed) < MAX_SESSIONS and (len(placed) < MIN_SESSIONS or len(set(placed)) < 2):
            session_id = f"llmp-verify-{uuid.uuid4().hex}"
            served: list[str] = []
            for n in range(SESSION_CALLS):
                answer = gateways.chat(host, model, session_id, n)
                problem = _not_served_here(answer, (deployment,))
                if problem is not None:
                    return failed(group, name, f"{model}: {problem}")
                replica = answer.headers.get(REPLICA_HEADER)
                if replica is None:
                    return failed(group, name, f"no {REPLICA_HEADER} header on the answer: the gateway's image is "
                                               "older than this check")
                served.append(replica)
            if len(set(served)) > 1:
                return failed(group, name, f"{model}: one session moved between replicas: {', '.join(served)} "
                                           f"({BOUNDED_LOAD})")
            placed.append(served[0])
        spread = sorted(set(placed))
        if len(spread) < 2:
            return failed(group, name, f"{model}: {len(placed)} sessions all on replica {spread[0]} of {replicas}: "
                                       "the session id does not pick the replica")
        return passed(group, name, f"{model}: {len(placed)} sessions of {SESSION_CALLS} calls, each on one "
                                   f"replica, {len(spread)} replicas in all ({', '.join(spread)}); {BOUNDED_LOAD}")

    return _guarded(group, name, gateways, host, check)


def refused_outside_zone(gateways: Gateways, group: str, host: str, model: str, zone: str) -> Check:
    """A model restricted to `zone` called on a gateway outside it: 421 with the zone's own name, never served."""
    name = f"{model} refused outside zone {zone}"

    def check() -> Check:
        answer = gateways.chat(host, model)
        if answer.status == 200:
            return failed(group, name, f"{host} served it (200): a model restricted to {zone} answered outside it")
        code, said = _error(answer)
        if answer.status == 421 and code == OTHER_ZONE_CODE:
            return passed(group, name, f"421 {code}")
        return failed(group, name, f"expected 421 {OTHER_ZONE_CODE}, {said}")

    return _guarded(group, name, gateways, host, check)
