"""Calls to cloud-hosted model APIs whose requests are more than a body and a static key: Azure OpenAI and Bedrock.

Both go through the streaming `aiohttp.ClientSession` (a hosted call costs milliseconds; the lean client's
prebuilt heads fit neither a per-call signature nor a query string), so the OpenAI-compatible hot path is
untouched: attempts take this path only for `provider: azure | bedrock`.

- Azure OpenAI: `POST {api_base}/openai/deployments/{deployment}/chat/completions?api-version=...` (and
  `/completions`, `/embeddings`), OpenAI's bodies and answers otherwise
  (learn.microsoft.com/azure/ai-services/openai/reference#chat-completions). Its errors use OpenAI's shape;
  a prompt its content filter refuses is a 400 with `code: content_filter`, passed to the client as such.
- Bedrock: `POST {endpoint}/model/{modelId}/converse` and `/converse-stream` (botocore's
  bedrock-runtime service-2.json), SigV4-signed (`upstream/aws_signing.py`). Its errors are a status, an
  `x-amzn-ErrorType` header naming the exception and `{"message": ...}`: rewritten into OpenAI's error shape
  naming the exception, so the status decides as for any upstream (400 ValidationException goes back to
  the client, 429 ThrottlingException is retried elsewhere, ...).
"""

from __future__ import annotations

import asyncio
import importlib
from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from gateway.config.clouds import AzureSettings
from gateway.protocols.bedrock_events import ConverseEventReader
from gateway.protocols.request import Request
from gateway.upstream.azure_auth import AzureAuth, AzureTokenError
from gateway.upstream.client import Answer, UpstreamLimitExceeded
from gateway.upstream.routing import PATHS, DeploymentPool, Replica

if TYPE_CHECKING:
    from gateway.upstream.aws_signing import AwsCredentials, AwsSigner

CLOUD_PROVIDERS = frozenset({"azure", "bedrock"})


class CloudAuthFailed(Exception):
    """No credentials to sign or authorize the call with (AWS chain empty, STS or Entra ID refused or away)."""
EVENT_STREAM = "application/vnd.amazon.eventstream"


class CloudCalls:
    """Sends Azure and Bedrock calls: URL, auth and signature per deployment, credentials shared."""

    def __init__(self, aws: AwsCredentials | None = None) -> None:
        self.aws = aws  # made at start when a Bedrock deployment is configured (`prepare`)
        self._azure: dict[str, AzureAuth] = {}
        self._signers: dict[str, AwsSigner] = {}

    async def prepare(self, pools: list[DeploymentPool]) -> None:
        """At start: import botocore's signer when a Bedrock deployment is configured, in a thread. Importing it
        costs ~0.3 s, which on the first Bedrock call would stall every call on the event loop; a gateway
        without Bedrock deployments never pays it."""
        if any(pool.provider == "bedrock" for pool in pools):
            module = await asyncio.to_thread(importlib.import_module, "gateway.upstream.aws_signing")
            self.aws = self.aws or module.AwsCredentials()

    async def post(self, session: aiohttp.ClientSession, dep: DeploymentPool, replica: Replica, request: Request,
                   payload: bytes) -> aiohttp.ClientResponse:
        """The upstream's response, headers read; the caller reads or streams its body."""
        if dep.provider == "azure":
            path = PATHS["openai"][request.endpoint]
            url = URL(f"{replica.base_url}/openai/deployments/{quote(dep.model, safe='')}{path}", encoded=True)
            auth = self._azure.get(dep.name)
            if auth is None:
                auth = self._azure[dep.name] = AzureAuth(dep.config.azure or AzureSettings())
            url = url.with_query({"api-version": auth.settings.api_version})
            try:
                credentials = await auth.header(session, _api_key(dep))
            except AzureTokenError as exc:
                raise CloudAuthFailed(str(exc)) from None
            headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **credentials}
        else:
            # The model id is one path segment: `:` and `/` (ARNs) are percent-encoded, as botocore does.
            operation = "converse-stream" if request.stream else "converse"
            url = URL(f"{replica.base_url}/model/{quote(dep.model, safe='-_.~')}/{operation}", encoded=True)
            from gateway.upstream.aws_signing import AwsCredentials, AwsSigner, NoAwsCredentials

            signer = self._signers.get(dep.name)
            if signer is None:
                self.aws = self.aws or AwsCredentials()
                signer = self._signers[dep.name] = AwsSigner(dep.config.aws_region, self.aws)
            accept = EVENT_STREAM if request.stream else "application/json"
            try:
                headers = await signer.headers(str(url), payload, accept)
            except NoAwsCredentials as exc:
                raise CloudAuthFailed(str(exc)) from None
            headers["Accept-Encoding"] = "identity"  # not signed: SigV4 lists the headers it covers
        return await session.post(url, data=payload, headers=headers, timeout=dep.client_timeout)

    @staticmethod
    def events(dep: DeploymentPool, response: aiohttp.ClientResponse) -> ConverseEventReader:
        return ConverseEventReader(response.content, dep.limits.sse_event_bytes)

    @staticmethod
    async def whole(dep: DeploymentPool, response: aiohttp.ClientResponse, limit: int | None = None) -> Answer:
        """The whole answer (at most `upstream_limits.body_bytes`, or `limit` for an error), released after.
        A Bedrock error comes back in OpenAI's error shape, naming its exception."""
        cap = dep.limits.body_bytes if limit is None else limit
        parts: list[bytes] = []
        size = 0
        try:
            while chunk := await response.content.readany():
                size += len(chunk)
                if size > cap:
                    if limit is not None:
                        break  # an error's message is in its first bytes
                    raise UpstreamLimitExceeded("body_bytes", cap)
                parts.append(chunk)
        finally:
            response.release()
        body = b"".join(parts)
        headers = {k.lower(): v for k, v in response.headers.items()}
        if dep.provider == "bedrock" and response.status != 200:
            body = _bedrock_error(headers, body)
        return Answer(response.status, response.reason or "", headers, body)


def _api_key(dep: DeploymentPool) -> str | None:
    """The deployment's current key (routing keeps it, rotated, in its Authorization header)."""
    value = dep.headers.get("Authorization")
    return value.removeprefix("Bearer ") if value else None


def _bedrock_error(headers: dict[str, str], body: bytes) -> bytes:
    # x-amzn-ErrorType: "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"; a body's
    # `__type` says the same for some services (botocore/parsers.py, RestJSONParser._do_error_parse).
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = {}
    parsed = parsed if isinstance(parsed, dict) else {}
    kind = headers.get("x-amzn-errortype", "") or str(parsed.get("__type", ""))
    kind = kind.split(":", 1)[0].rsplit("#", 1)[-1] or "BedrockError"
    message = parsed.get("message") or parsed.get("Message") or body[:400].decode(errors="replace")
    return orjson.dumps({"error": {"message": f"{kind}: {message}", "type": kind, "code": kind}})
