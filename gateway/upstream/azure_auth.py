"""Azure OpenAI's credentials: the `api-key` header, a given Entra ID token, or one fetched and refreshed from
client credentials.

Azure OpenAI takes either `api-key: <key>` or `Authorization: Bearer <Entra ID token>` for the scope
`https://cognitiveservices.azure.com/.default` (learn.microsoft.com/azure/ai-services/openai/reference,
"Authentication"). Client credentials are exchanged at `{authority}/{tenant}/oauth2/v2.0/token`
(learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow); the answer's `expires_in`
says for how long. The token is fetched again REFRESH_BEFORE seconds ahead of its expiry by one background
task, while calls go on with the current token, which is still valid: no call waits on Entra ID then, and a
failed refresh keeps the current token (tried again RETRY_AFTER seconds later). Calls wait only when there is
no valid token (the first call, or after every refresh failed until expiry), one fetch for all of them, so
requests never carry an expired token and the token endpoint sees one request per refresh. LiteLLM's names
for the same settings: `azure_ad_token`, `tenant_id`, `client_id`, `client_secret`
(docs.litellm.ai/docs/providers/azure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import orjson

from gateway.config.clouds import AzureSettings

SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_BEFORE = 300.0  # s: fetch a new token this long before the current one expires
RETRY_AFTER = 10.0  # s: after a failed background refresh, the next one no sooner than this
TOKEN_ANSWER_BYTES = 64 * 1024


class AzureTokenError(Exception):
    """Entra ID refused the client credentials or answered something that is not a token."""


class AzureAuth:
    """The auth header for one Azure deployment's calls."""

    def __init__(self, settings: AzureSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None  # the one background refresh (a strong reference)
        self._retry_at = 0.0
        self.refresh_error: str | None = None  # the last background refresh's failure, for logs and tests

    async def header(self, session: aiohttp.ClientSession, api_key: str | None) -> dict[str, str]:
        if api_key is not None:
            return {"api-key": api_key}
        if self.settings.ad_token is not None:
            return {"Authorization": f"Bearer {self.settings.ad_token}"}
        now = self._clock()
        if self._token is not None and now < self._expires:
            if now >= max(self._expires - REFRESH_BEFORE, self._retry_at) and self._refreshing is None:
                self._refreshing = asyncio.create_task(self._refresh(session))
            return {"Authorization": f"Bearer {self._token}"}
        async with self._lock:  # no valid token: one fetch, every call waits for it
            if self._token is None or self._clock() >= self._expires:
                await self._fetch(session)
        return {"Authorization": f"Bearer {self._token}"}

    async def _refresh(self, session: aiohttp.ClientSession) -> None:
        try:
            async with self._lock:
                if self._clock() >= self._expires - REFRESH_BEFORE:
                    await self._fetch(session)
            self.refresh_error = None
        except Exception as exc:  # noqa: BLE001 - the current token stays; calls fetch themselves once it expires
            self.refresh_error = f"{type(exc).__name__}: {exc}"[:300]
            self._retry_at = self._clock() + RETRY_AFTER
        finally:
            self._refreshing = None

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        s = self.settings
        url = f"{s.authority_host.rstrip('/')}/{s.tenant_id}/oauth2/v2.0/token"
        form = {"grant_type": "client_credentials", "client_id": s.client_id or "",
                "client_secret": s.client_secret or "", "scope": SCOPE}
        started = self._clock()
        try:
            async with session.post(url, data=form, timeout=aiohttp.ClientTimeout(total=30)) as response:
                text = await response.content.read(TOKEN_ANSWER_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AzureTokenError(f"Entra ID token endpoint {s.authority_host} unreachable: "
                                  f"{type(exc).__name__}") from None
        try:
            answer = orjson.loads(text)
        except orjson.JSONDecodeError:
            answer = None
        if response.status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            # Entra's error answers carry `error` and `error_description`, never the secret.
            detail = answer.get("error_description") or answer.get("error") if isinstance(answer, dict) else None
            raise AzureTokenError(f"Entra ID token request for tenant {s.tenant_id} failed with {response.status}: "
                                  f"{str(detail or 'not a token answer')[:300]}")
        expires_in = answer.get("expires_in", 3600)
        lifetime = float(expires_in) if isinstance(expires_in, (int, float, str)) and str(expires_in).isdigit() \
            else 3600.0
        self._token = answer["access_token"]
        self._expires = started + lifetime
