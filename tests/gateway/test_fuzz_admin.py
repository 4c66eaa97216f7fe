"""Hostile admin bodies never break the gateway: no 5xx, lists and infos still answer, limits still count.

Hypothesis generates `/key/generate`, `/key/update`, `/team/new` and `/user/new` bodies with hostile values for
every field (huge, negative, NaN and infinite numbers, huge strings, wrong types, nested junk) against
a running gateway with a real ledger and real Redis, derandomized so that every run tries the
same bodies, on SQLite and on PostgreSQL. Each key that is made is also used once, with a hostile
`max_tokens`.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import KEY, MODEL, RunningGateway
from tests.gateway.servers import RedisServer
from tests.gateway.test_governance_bounds import governed, rpm_still_holds
from tests.gateway.test_governance_bounds import pg_dsn as pg_dsn
from tests.gateway.test_keys_admin import admin

KEY_FIELDS = ("key_alias", "duration", "expires", "models", "max_budget", "budget_duration", "rpm_limit",
              "tpm_limit", "max_parallel_requests", "team_id", "metadata", "user_id", "key", "residency",
              "max_tokens", "max_request_bytes", "model_rpm_limit", "model_tpm_limit", "blocked")
TEAM_FIELDS = ("team_id", "team_alias", "models", "max_budget", "budget_duration", "rpm_limit", "tpm_limit",
               "max_parallel_requests", "metadata", "residency", "blocked", "members_with_roles")
USER_FIELDS = ("user_id", "user_email", "user_alias", "user_role", "teams", "models", "max_budget",
               "budget_duration", "rpm_limit", "tpm_limit", "max_parallel_requests", "metadata", "key_alias",
               "duration", "auto_create_key")

wide_ints = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**62, 2**63 - 1, 10**12 + 1, 10**9 + 1]),
    st.integers(min_value=0, max_value=100),
)
wide_floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e20, -1e20, 1e300, 0.5]))
numbers = st.one_of(wide_ints, wide_floats, st.floats(), st.integers())  # NaN, inf, > 64 bits: refused as JSON
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "\ud7ff" * 3, MODEL, "us"]),
    st.integers(min_value=1, max_value=200_000).map(lambda n: "z" * n),  # huge strings
)
durations = st.one_of(st.from_regex(r"-?[0-9]{1,20}(s|m|h|d|mo|y)?", fullmatch=True),
                      st.sampled_from(["99999999999999d", "36500d", "36501d", "1mo", "0s", "30d"]))
times = st.one_of(wide_floats, wide_ints, st.datetimes().map(lambda d: d.isoformat()),
                  st.sampled_from(["9999-12-31T23:59:59Z", "99999-01-01", "0001-01-01T00:00:00", "soon"]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


# Per field: values of the right type and absurd size (what slips past type checks), or junk of any type.
TYPED: dict[str, st.SearchStrategy[Any]] = {
    **{f: st.one_of(wide_ints, wide_floats) for f in ("max_budget", "rpm_limit", "tpm_limit",
                                                       "max_parallel_requests", "max_tokens", "max_request_bytes")},
    **{f: texts for f in ("key_alias", "team_id", "user_id", "residency", "team_alias", "user_email", "user_alias",
                          "user_role")},
    "teams": st.lists(st.one_of(texts, st.fixed_dictionaries({"team_id": texts, "user_role": texts}), junk),
                      max_size=3),
    "members_with_roles": st.lists(st.one_of(st.fixed_dictionaries({"role": texts, "user_id": texts}),
                                             st.fixed_dictionaries({"user_email": texts}), junk), max_size=3),
    "auto_create_key": st.one_of(st.booleans(), junk),
    "duration": durations, "budget_duration": durations, "expires": times,
    "models": st.lists(texts, max_size=5) | st.integers(min_value=1001, max_value=3000).map(lambda n: ["m"] * n),
    "model_rpm_limit": st.dictionaries(texts, wide_ints, max_size=3),
    "model_tpm_limit": st.dictionaries(texts, wide_ints, max_size=3),
    "metadata": st.one_of(st.dictionaries(st.text(max_size=10), junk, max_size=4),
                          st.integers(min_value=200, max_value=1200).map(lambda d: {"deep": _nested(d)}),
                          st.integers(min_value=1, max_value=100_000).map(lambda n: {"big": "y" * n})),
    "key": st.one_of(texts.map(lambda t: "sk-" + t), texts),
    "blocked": st.booleans(),
}


def bodies(fields: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """One to three fields, each absurd but well typed (3 in 4) or junk; sometimes an unknown field too."""
    def of(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries({n: st.one_of(TYPED[n], TYPED[n], TYPED[n], junk) for n in names})

    chosen = st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True).flatmap(of)
    return st.tuples(chosen, st.dictionaries(st.text(max_size=12), scalars, max_size=1)).map(
        lambda pair: {**pair[1], **pair[0]})


def call(url: str, method: str, path: str, body: Any = None, key: str = KEY) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body, allow_nan=True).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw[:300]


def fuzz(gw: RunningGateway, made: list[str]) -> None:
    url = gw.url
    _, base = call(url, "POST", "/key/generate", {"key_alias": "fuzz-target"})

    @settings(max_examples=80, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(generate=bodies(KEY_FIELDS), update=bodies(KEY_FIELDS), team=bodies(TEAM_FIELDS), max_tokens=scalars,
           user=bodies(USER_FIELDS))
    def one(generate: dict[str, Any], update: dict[str, Any], team: dict[str, Any], max_tokens: Any,
            user: dict[str, Any]) -> None:
        status, answer = call(url, "POST", "/key/generate", generate)
        assert status < 500, (generate, answer)
        if status == 200:
            made.append(answer["token_id"])
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
            status, reply = call(url, "POST", "/v1/chat/completions", chat, key=answer["key"])
            assert status < 500, (generate, max_tokens, reply)
        status, answer = call(url, "POST", "/key/update", {**update, "key": base["key"]})
        assert status < 500, (update, answer)
        status, answer = call(url, "POST", "/team/new", team)
        assert status < 500, (team, answer)
        status, answer = call(url, "POST", "/user/new", user)
        assert status < 500, (user, answer)
        if status == 200:
            status, answer = call(url, "GET", f"/user/info?user_id={urllib.parse.quote(answer['user_id'])}")
            assert status == 200, (user, answer)

    one()


async def test_hostile_admin_bodies_never_break_the_gateway_sqlite(gateway_factory, sim, tmp_path,
                                                                    redis_server: RedisServer) -> None:
    await hostile_bodies(await gateway_factory(governed(sim, tmp_path, redis_server.url)))


async def test_hostile_admin_bodies_never_break_the_gateway_postgres(gateway_factory, sim, tmp_path, pg_dsn: str,
                                                                      redis_server: RedisServer) -> None:
    config = governed(sim, tmp_path, redis_server.url)
    config["ledger"]["store"] = pg_dsn
    await hostile_bodies(await gateway_factory(config))


async def hostile_bodies(gw: RunningGateway) -> None:
    made: list[str] = []
    await asyncio.to_thread(fuzz, gw, made)
    assert made, "some hostile bodies are valid keys, and were used"
    status, listed = await admin(gw, "GET", "/key/list")
    assert status == 200 and listed["total_count"] >= len(made)
    for token in made:
        status, info = await admin(gw, "GET", f"/key/info?key={token}")
        assert status == 200, info
    status, _ = await admin(gw, "GET", "/team/list")
    assert status == 200
    await gw.state.governance.cache.refresh(force=True)  # every stored key and team reads back
    assert not gw.state.governance.limiter._down, "no limiter left in outage mode"
    await rpm_still_holds(gw)
    await gw.state.governance.ledger.flush()
    log = gw.log_buffer.getvalue()
    for event in (b"limits_unavailable", b"limits_error", b"store_row_unreadable", b"ledger_row_quarantined",
                  b"ledger_store_unavailable"):
        assert event not in log, f"{event.decode()}: nothing out of bounds was stored, counted or spooled"
