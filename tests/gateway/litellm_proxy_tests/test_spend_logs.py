"""LiteLLM's tests/test_spend_logs.py and its /spend/logs and /global/spend/report calls against the gateway:
rows per request, key, user and team, the summary by day, and the daily report per team and per key."""

from __future__ import annotations

import datetime as dt

from tests.gateway.litellm_proxy_tests.conftest import MESSAGES, Proxy


async def test_spend_logs_per_request_key_user_and_team(proxy: Proxy) -> None:
    _, team = await proxy.call("POST", "/team/new", {"team_alias": "search"})
    _, user = await proxy.call("POST", "/user/new", {})
    _, made = await proxy.call("POST", "/key/generate", {"team_id": team["team_id"], "user_id": user["user_id"]})
    raw = await proxy.client(made["key"]).chat.completions.with_raw_response.create(model="gpt-3.5-turbo",
                                                                                    messages=MESSAGES)
    await proxy.client(user["key"]).chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)
    await proxy.flushed()
    _, [row] = await proxy.call("GET", f"/spend/logs?request_id={raw.headers['x-request-id']}")
    assert row["api_key"] == made["token_id"] and row["team_id"] == team["team_id"] and row["user"] == user["user_id"]
    assert row["model"] == "gpt-3.5-turbo" and row["spend"] > 0 and row["total_tokens"] == (
        row["prompt_tokens"] + row["completion_tokens"])
    _, by_key = await proxy.call("GET", f"/spend/logs?api_key={made['key']}")
    assert [r["request_id"] for r in by_key] == [row["request_id"]]
    _, by_user = await proxy.call("GET", f"/spend/logs?user_id={user['user_id']}")
    assert len(by_user) == 2, "both keys of the user"


async def test_spend_logs_summary_by_day_and_global_report(proxy: Proxy) -> None:
    _, team = await proxy.call("POST", "/team/new", {"team_alias": "search"})
    _, made = await proxy.call("POST", "/key/generate", {"team_id": team["team_id"]})
    await proxy.client(made["key"]).chat.completions.create(model="gpt-4", messages=MESSAGES)
    await proxy.flushed()
    today = dt.datetime.now(dt.UTC).date().isoformat()
    _, [day] = await proxy.call("GET", f"/spend/logs?start_date={today}&end_date={today}")
    assert day["startTime"] == today and day["models"] == {"gpt-4": day["spend"]} and day[made["token_id"]] > 0
    status, report = await proxy.call("GET", f"/global/spend/report?start_date={today}&end_date={today}")
    assert status == 200 and report[0]["group_by_day"] == today
    [teams] = [d["teams"] for d in report]
    assert teams[0]["team_name"] == "search" and teams[0]["metadata"][0]["api_key"] == made["token_id"]
    _, by_key = await proxy.call("GET", f"/global/spend/report?start_date={today}&end_date={today}"
                                        "&group_by=api_key")
    assert by_key[0]["api_key"] == made["token_id"] and by_key[0]["model_details"][0]["model"] == "gpt-4"
    status, body = await proxy.call("GET", "/global/spend/report")
    assert status == 400 and body["error"]["param"] == "start_date"
