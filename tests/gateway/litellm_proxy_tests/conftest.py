"""The gateway as LiteLLM's proxy tests find it: started from a LiteLLM config.yaml (model_list, master key
`sk-1234`, a PostgreSQL `database_url`), the simulator playing every upstream the tests name, and helpers that
make the tests' HTTP calls (their base URL `http://0.0.0.0:4000` becomes the gateway's)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from gateway.config.loading import parse_config
from tests.gateway.conftest import RunningGateway
from tests.gateway.servers import PostgresServer, new_database

MASTER_KEY = "sk-1234"  # LiteLLM's tests' master key; accepted here because the gateway runs with --dev
# The model names LiteLLM's proxy tests call (their proxy_server_config.yaml), all played by the simulator.
MODEL_NAMES = ("gpt-4", "gpt-3.5-turbo", "azure-models", "fake-openai-endpoint", "text-embedding-ada-002", "dall-e-2")
INPUT_COST, OUTPUT_COST = 0.0000015, 0.000002  # USD per token, given in the config as LiteLLM's model_info
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello!"}]


def litellm_config(sim_url: str, database_url: str) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": name, "litellm_params": {"model": "openai/sim-model", "api_base": sim_url,
                                                                "api_key": "sk-upstream-not-checked"},
                        "model_info": {"input_cost_per_token": INPUT_COST, "output_cost_per_token": OUTPUT_COST}}
                       for name in MODEL_NAMES],
        "general_settings": {"master_key": MASTER_KEY, "database_url": database_url},
    }


@pytest.fixture
async def database(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh database on the test cluster (LiteLLM keeps keys in PostgreSQL): its URL."""
    yield await new_database(postgres_server, "litellm_compat")


class Proxy:
    """The gateway under LiteLLM's tests: `call` makes one HTTP call as they do (aiohttp, a Bearer key)."""

    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        self.url = gw.url

    async def call(self, method: str, path: str, body: Any = None, key: str = MASTER_KEY) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.url + path, json=body, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)

    def client(self, key: str) -> openai.AsyncOpenAI:
        # LiteLLM's tests pass base_url="http://0.0.0.0:4000" (no /v1): the gateway serves both.
        return openai.AsyncOpenAI(api_key=key, base_url=self.url, max_retries=0)

    async def flushed(self) -> None:
        """Spend reaches the store: LiteLLM's tests sleep for it ("allow db log to be updated"); here, once no call
        is in flight (each is recorded as it ends), the spool is flushed."""
        for _ in range(200):
            if self.gw.state.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        await self.gw.state.governance.ledger.flush()


@pytest.fixture
async def proxy(gateway_factory: Any, sim: Any, database: str) -> Proxy:
    config = parse_config(litellm_config(sim.base_url, database))
    return Proxy(await gateway_factory(config, dev=True))
