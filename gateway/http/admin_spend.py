"""The admin API's spend and model views: our grouped report, LiteLLM's /spend/logs and /global/spend/report,
and /model/info (the models a caller may use, with their prices).

    GET /spend/report?group_by=key|team|model|day|user[&start_date=YYYY-MM-DD][&end_date=][&key=][&team_id=]
                      [&user_id=]
    GET /spend/logs[?api_key=][&user_id=][&request_id=][&team_id=][&start_date=&end_date=[&summarize=false]]
        LiteLLM's rows (request_id, api_key, spend, tokens, startTime, model, user, team_id ...), newest first,
        at most 10,000; with both dates and summarize (the default), one entry per day: {startTime, spend,
        users: {user: spend}, models: {model: spend}, <api_key>: spend} (spend_management_endpoints.py,
        `view_spend_logs`, LiteLLM 1.106.2)
    GET /global/spend/report?start_date=&end_date=[&group_by=team|api_key][&team_id=][&api_key=]
        [&internal_user_id=]: per day, per team, spend by model and key; or per key, spend by model
        (LiteLLM's `get_global_spend_report`, an enterprise endpoint there)
    GET /model/info, /v1/model/info: {data: [{model_name, litellm_params, model_info}]}; a virtual key sees the
        models it may call
Dates are UTC days, both ends included.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from gateway.governance.model_access import may_use
from gateway.http.admin_http import AdminCore, Caller, guarded, json_response, query, token_of
from gateway.http.errors import bad_request

LOGS_CAP = 10_000  # LiteLLM's SPEND_LOGS_PAGINATION_COUNT_CAP: the header below says when it cut
GROUPS = {"key": ("key_token", "key_alias"), "team": ("team_id",), "model": ("model",), "day": ("day",),
          "user": ("user_id",)}


def _day(http: web.Request, name: str) -> str | None:
    value = http.query.get(name)
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise bad_request(f"{name}: {value!r} is not a date like 2026-01-31", name) from None


def _filters(http: web.Request, **names: str) -> dict[str, str]:
    """Store filters from query parameters (`names`: filter <- parameter); dates checked, keys hashed."""
    found: dict[str, str] = {}
    for name in ("start_date", "end_date"):
        day = _day(http, name)
        if day is not None:
            found["start" if name == "start_date" else "end"] = day
    for column, parameter in names.items():
        value = query(http, parameter)
        if value:
            found[column] = token_of(value) if column == "key_token" else value
    return found


def _log_row(row: dict[str, Any]) -> dict[str, Any]:
    """A spend row as LiteLLM's LiteLLM_SpendLogs (we record one time per call: start and end are the same)."""
    ts = dt.datetime.fromtimestamp(row["ts"], dt.UTC).isoformat()
    return {"request_id": row["request_id"], "call_type": "acompletion", "api_key": row["key_token"],
            "spend": row["cost"] or 0.0, "total_tokens": (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0),
            "prompt_tokens": row["prompt_tokens"] or 0, "completion_tokens": row["completion_tokens"] or 0,
            "startTime": ts, "endTime": ts, "model": row["model"], "model_group": row["model"],
            "model_id": row["deployment"], "user": row["user_id"] or "", "team_id": row["team_id"],
            "metadata": {"user_api_key_alias": row["key_alias"], "region": row["region"]},
            "status": "success" if row["status"] == 200 else "failure", "region": row["region"],
            # LiteLLM's cache_hit is a string column ("True"/"False"; "" when unknown); `saved`: USD a hit did not pay
            "cache_hit": "" if row.get("cache_hit") is None else str(bool(row["cache_hit"])),
            "saved": row.get("saved") or 0.0}


class SpendApi:
    def __init__(self, admin: AdminCore) -> None:
        self.admin = admin
        self.store = admin.store

    def routes(self) -> list[web.RouteDef]:
        g = self.admin.gov
        return [
            web.get("/spend/report", guarded(g, self.spend_report)),
            web.get("/spend/logs", guarded(g, self.spend_logs)),
            web.get("/global/spend/report", guarded(g, self.global_report)),
            web.get("/model/info", guarded(g, self.model_info, self_service=True)),
            web.get("/v1/model/info", guarded(g, self.model_info, self_service=True)),
            web.get("/model_group/info", guarded(g, self.model_group_info, self_service=True)),
        ]

    async def spend_report(self, http: web.Request, caller: Caller) -> web.Response:
        group_by = http.query.get("group_by", "key")
        if group_by not in GROUPS:
            raise bad_request(f"group_by: {group_by!r} is not one of {', '.join(GROUPS)}", "group_by")
        filters = _filters(http, key_token="key", team_id="team_id", user_id="user_id")
        rows = await self.store.spend_grouped(GROUPS[group_by], filters)
        return json_response({"group_by": group_by, "start_date": filters.get("start"),
                              "end_date": filters.get("end"), "data": rows,
                              "total_spend": round(sum(r["spend"] for r in rows), 10)})

    async def spend_logs(self, http: web.Request, caller: Caller) -> web.Response:
        filters = _filters(http, key_token="api_key", user_id="user_id", request_id="request_id",
                           team_id="team_id")
        summarize = http.query.get("summarize", "true").lower() not in ("false", "0")
        if "start" in filters and "end" in filters and summarize:
            days: dict[str, dict[str, Any]] = {}
            for r in await self.store.spend_grouped(("day", "key_token", "user_id", "model"), filters):
                day = days.setdefault(r["day"], {"startTime": r["day"], "spend": 0.0, "users": {}, "models": {}})
                day["spend"] += r["spend"]
                if r["key_token"] is not None:
                    day[r["key_token"]] = day.get(r["key_token"], 0.0) + r["spend"]
                user = r["user_id"] or ""
                day["users"][user] = day["users"].get(user, 0.0) + r["spend"]
                day["models"][r["model"]] = day["models"].get(r["model"], 0.0) + r["spend"]
            return json_response([days[d] for d in sorted(days)])
        rows = await self.store.spend_rows(filters, LOGS_CAP)
        response = json_response([_log_row(r) for r in rows])
        if len(rows) == LOGS_CAP:
            response.headers["x-litellm-spend-logs-truncated"] = "true"
        return response

    async def global_report(self, http: web.Request, caller: Caller) -> web.Response:
        if "start_date" not in http.query or "end_date" not in http.query:
            raise bad_request("start_date, end_date: both required (YYYY-MM-DD)", "start_date")
        group_by = http.query.get("group_by", "team")
        if group_by == "customer":
            raise bad_request("group_by: `customer` (the request's `user` field) is not recorded by this gateway; "
                              "use team or api_key", "group_by")
        if group_by not in ("team", "api_key"):
            raise bad_request(f"group_by: {group_by!r} is not one of team, api_key", "group_by")
        filters = _filters(http, key_token="api_key", team_id="team_id", user_id="internal_user_id")
        if group_by == "api_key" or "key_token" in filters:
            keys: dict[str, dict[str, Any]] = {}
            for r in await self.store.spend_grouped(("key_token", "model"), filters):
                k = keys.setdefault(r["key_token"], {"api_key": r["key_token"], "total_cost": 0.0,
                                                     "total_input_tokens": 0, "total_output_tokens": 0,
                                                     "model_details": []})
                k["total_cost"] += r["spend"]
                k["total_input_tokens"] += r["prompt_tokens"]
                k["total_output_tokens"] += r["completion_tokens"]
                k["model_details"].append({"model": r["model"], "total_cost": r["spend"],
                                           "total_input_tokens": r["prompt_tokens"],
                                           "total_output_tokens": r["completion_tokens"]})
            return json_response(sorted(keys.values(), key=lambda k: -k["total_cost"]))
        aliases = {t.team_id: t.team_alias for t in await self.store.list_teams()}
        days: dict[str, dict[str, dict[str, Any]]] = {}
        for r in await self.store.spend_grouped(("day", "team_id", "model", "key_token"), filters):
            name = aliases.get(r["team_id"]) or "Unassigned Team"  # LiteLLM: COALESCE(team_alias, 'Unassigned Team')
            team = days.setdefault(r["day"], {}).setdefault(name, {"team_name": name, "total_spend": 0.0,
                                                                   "metadata": []})
            team["total_spend"] += r["spend"]
            team["metadata"].append({"model": r["model"], "api_key": r["key_token"], "spend": r["spend"],
                                     "total_tokens": r["prompt_tokens"] + r["completion_tokens"]})
        return json_response([{"group_by_day": d, "teams": list(days[d].values())} for d in sorted(days)])

    def _visible(self, caller: Caller) -> list[Any]:
        """The configured models this caller may call: all for the master key; a key's, its team's and its user's
        lists each allowing it, read as on the request path (governance/model_access.py)."""
        models = self.admin.gov.config.models
        key = caller.key
        if caller.admin or key is None:
            return list(models)
        lists = [(key.models, key.team_id is not None), (caller.team.models if caller.team else (), False),
                 (caller.user.models if caller.user else (), False)]
        return [m for m in models if all(may_use(names, m.alias, None, in_team) for names, in_team in lists)]

    async def model_group_info(self, http: web.Request, caller: Caller) -> web.Response:
        """LiteLLM's /model_group/info: one entry per model name (proxy_server.py, `model_group_info`)."""
        return json_response({"data": [{
            "model_group": m.alias, "providers": sorted({d.provider for d in m.deployments}),
            "max_output_tokens": m.max_tokens, "input_cost_per_token": m.input_cost_per_token,
            "output_cost_per_token": m.output_cost_per_token, "mode": "chat"} for m in self._visible(caller)]})

    async def model_info(self, http: web.Request, caller: Caller) -> web.Response:
        wanted = query(http, "litellm_model_id")
        data = []
        for m in self._visible(caller):
            for d in m.deployments:
                if wanted is not None and d.name != wanted:
                    continue
                params: dict[str, Any] = {"model": f"{d.provider}/{d.model}"}
                if caller.admin:  # where the platform's servers are is the admin's to know (as /health)
                    params["api_base"] = d.api_base
                data.append({"model_name": m.alias, "litellm_params": params,
                             "model_info": {"id": d.name, "db_model": False, "max_tokens": m.max_tokens,
                                            "input_cost_per_token": d.input_cost_per_token
                                            if d.input_cost_per_token is not None else m.input_cost_per_token,
                                            "output_cost_per_token": d.output_cost_per_token
                                            if d.output_cost_per_token is not None else m.output_cost_per_token,
                                            "region": d.region, "residency": d.residency, "tier": d.tier,
                                            "mode": "chat"}})
        return json_response({"data": data})
