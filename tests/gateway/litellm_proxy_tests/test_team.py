"""LiteLLM's tests/test_team.py scenarios against the gateway: teams made in parallel with members, read by the
master key, by the team's key and a member's key and refused to others, members added and removed, updates that
keep the rest of the team."""

from __future__ import annotations

import asyncio
import uuid

from tests.gateway.litellm_proxy_tests.conftest import Proxy


async def new_team(proxy: Proxy, **extra: object) -> dict:
    status, made = await proxy.call("POST", "/team/new", {"team_alias": "my-new-team", **extra})
    assert status == 200, made
    return made


async def test_team_new(proxy: Proxy) -> None:
    user_id = str(uuid.uuid4())
    made = await asyncio.gather(*(new_team(proxy, members_with_roles=[{"role": "user", "user_id": user_id}])
                                  for _ in range(10)))
    assert len({t["team_id"] for t in made}) == 10
    assert all(t["members_with_roles"] == [{"role": "user", "user_id": user_id, "user_email": None}] for t in made)
    _, info = await proxy.call("GET", f"/user/info?user_id={user_id}")
    assert len(info["teams"]) == 10, "the member's user was made, and belongs to every team"


async def test_team_info(proxy: Proxy) -> None:
    team_id = (await new_team(proxy))["team_id"]
    status, info = await proxy.call("GET", f"/team/info?team_id={team_id}")
    assert status == 200 and info["team_info"]["team_alias"] == "my-new-team"
    _, team_key = await proxy.call("POST", "/key/generate", {"team_id": team_id})
    status, _ = await proxy.call("GET", f"/team/info?team_id={team_id}", key=team_key["key"])
    assert status == 200
    _, other = await proxy.call("POST", "/key/generate", {})
    status, _ = await proxy.call("GET", f"/team/info?team_id={team_id}", key=other["key"])
    assert status == 403
    _, member = await proxy.call("POST", "/user/new", {})
    await proxy.call("POST", "/team/member_add", {"team_id": team_id,
                                                  "member": {"role": "user", "user_id": member["user_id"]}})
    status, _ = await proxy.call("GET", f"/team/info?team_id={team_id}", key=member["key"])
    assert status == 200, "a member's key reads its team (LiteLLM's validate_membership)"


async def test_team_update_keeps_the_rest_of_the_team(proxy: Proxy) -> None:
    admin_user = str(uuid.uuid4())
    await proxy.call("POST", "/user/new", {"user_id": admin_user})
    team = await new_team(proxy, members_with_roles=[{"role": "admin", "user_id": admin_user}])
    members = [{"role": "user", "user_id": f"krrish_{uuid.uuid4()}@berri.ai"} for _ in range(10)]
    status, added = await proxy.call("POST", "/team/member_add", {"team_id": team["team_id"], "member": members})
    assert status == 200 and len(added["updated_users"]) == 10, added
    _, info = await proxy.call("GET", f"/team/info?team_id={team['team_id']}")
    # LiteLLM counts 12 here: it also adds the master key's own user as an admin; the gateway has no such user.
    assert len(info["team_info"]["members_with_roles"]) == 11
    status, updated = await proxy.call("POST", "/team/update", {"team_id": team["team_id"],
                                                                "team_alias": "renamed"})
    assert status == 200 and updated["data"]["team_alias"] == "renamed"
    for name, value in updated["data"].items():
        if name not in ("team_alias", "members_with_roles", "spend"):
            assert value == team[name], name
    assert len(updated["data"]["members_with_roles"]) == 11


async def test_team_member_add_by_email_and_delete(proxy: Proxy) -> None:
    team_id = (await new_team(proxy))["team_id"]
    status, added = await proxy.call("POST", "/team/member_add", {"team_id": team_id, "member": {
        "role": "user", "user_email": "ana@example.com"}})
    assert status == 200 and added["members_with_roles"][0]["user_email"] == "ana@example.com"
    status, left = await proxy.call("POST", "/team/member_delete", {"team_id": team_id,
                                                                    "user_email": "ana@example.com"})
    assert status == 200 and left["members_with_roles"] == []
    status, body = await proxy.call("POST", "/team/member_add", {"team_id": team_id, "max_budget_in_team": 1,
                                                                 "member": {"role": "user", "user_id": "x"}})
    assert status == 400 and body["error"]["param"] == "max_budget_in_team", "a per-member budget is not enforced"


async def test_list_teams(proxy: Proxy) -> None:
    team_id = (await new_team(proxy))["team_id"]
    status, teams = await proxy.call("GET", "/team/list")
    assert status == 200 and [t["team_id"] for t in teams] == [team_id]
