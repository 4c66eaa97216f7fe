"""A key store outage never becomes 401s: known keys keep working from memory; admin writes say the store is down."""

from __future__ import annotations

import asyncio
import subprocess

from tests.gateway.conftest import MODEL, deployment, gateway_config
from tests.gateway.servers import PostgresServer
from tests.gateway.test_keys_admin import MESSAGES, admin


async def test_keys_keep_working_while_postgres_is_down(gateway_factory, sim, tmp_path) -> None:
    pg = PostgresServer()
    try:
        config = gateway_config([deployment("sim-a", sim.base_url)])
        config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": pg.url, "flush_interval": 0.1,
                            "store_timeout": 1}
        config["keys"] = {"refresh_seconds": 0.2}
        gw = await gateway_factory(config)
        _, made = await admin(gw, "POST", "/key/generate", {"key_alias": "steady", "rpm_limit": 1000})
        client = gw.client(api_key=made["key"])
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        subprocess.run([*pg._prefix, pg._pg_ctl, "-D", pg._data, "-m", "immediate", "-w", "-t", "30", "stop"],
                       check=True, capture_output=True, timeout=60)
        for _ in range(10):  # across several failed refreshes
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
            await asyncio.sleep(0.1)
        log = gw.log_buffer.getvalue()
        assert b'"key_store_unavailable"' in log and b'"ledger_store_unavailable"' in log
        status, body = await admin(gw, "POST", "/key/generate", {})
        assert status == 503 and "Key store unavailable" in body["error"]["message"]
        assert list((tmp_path / "spool").glob("*.spool")), "spend records wait in the spool"
    finally:
        pg.stop()
