"""The admin API's paths on a gateway without governance: one clear error saying how to turn it on."""

from __future__ import annotations

from aiohttp import web

from gateway.http.errors import GatewayError

# Every path AdminApi serves (http/admin.py, admin_users.py, admin_spend.py); tests/gateway/test_keys_admin.py
# checks that this list and the routes of a governed gateway are the same.
ADMIN_PATHS: tuple[tuple[str, str], ...] = (
    ("POST", "/key/generate"), ("POST", "/key/update"), ("POST", "/key/delete"), ("GET", "/key/info"),
    ("GET", "/key/list"), ("POST", "/team/new"), ("POST", "/team/update"), ("GET", "/team/info"),
    ("GET", "/team/list"), ("POST", "/user/new"), ("POST", "/user/update"), ("GET", "/user/info"),
    ("GET", "/user/list"), ("POST", "/user/delete"), ("POST", "/team/member_add"), ("POST", "/team/member_delete"),
    ("GET", "/spend/report"), ("GET", "/spend/logs"), ("GET", "/global/spend/report"), ("GET", "/model/info"),
    ("GET", "/v1/model/info"), ("GET", "/model_group/info"),
)

GOVERNANCE_OFF = (
    "{method} {path} needs governance (virtual keys, teams, the spend ledger), which is off on this gateway: "
    "add a `ledger:` section to its native config (e.g. `ledger: {{store: sqlite:///./llmp-ledger.db}}`), or "
    "`general_settings.database_url` to a LiteLLM config (gateway/README.md, Governance)"
)


async def governance_off(http: web.Request) -> web.Response:
    # 501: the endpoint exists, this gateway's config does not serve it; a bare 404 read as a wrong URL.
    return GatewayError(501, GOVERNANCE_OFF.format(method=http.method, path=http.path), "invalid_request_error",
                        None, "governance_off").response()


def governance_off_routes() -> list[web.RouteDef]:
    return [web.route(method, path, governance_off) for method, path in ADMIN_PATHS]
