"""Signing Bedrock calls with SigV4 and the gateway's own AWS credentials, refreshed off the event loop.

Credentials come from botocore's default chain (docs.aws.amazon.com/sdkref/latest/guide/standardized-credentials.html):
in a cluster, IRSA's web identity token (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, which EKS injects), so a
Bedrock deployment needs no provider key; on a laptop, the environment or a profile. Resolving the chain and
refreshing an expiring role session are blocking calls (files, IMDS, STS): they run in a worker thread, and
only then, while signing itself is pure CPU. botocore refreshes temporary credentials 15 minutes before they
expire (`RefreshableCredentials`, advisory timeout), so a refresh happens well ahead of the deadline.
The signing name of bedrock-runtime is `bedrock` (botocore data/bedrock-runtime/2023-09-30/service-2.json).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.session import Session

SIGNING_NAME = "bedrock"


class NoAwsCredentials(Exception):
    """No usable AWS credentials: the chain found none (no IRSA role, environment or profile), or a refresh
    failed (STS refused the web identity token, or could not be reached)."""


def _default_chain() -> Credentials | None:
    credentials: Credentials | None = Session().get_credentials()
    return credentials


class AwsSigner:
    """SigV4 headers for one region's Bedrock calls; one per deployment, sharing `credentials_source`."""

    def __init__(self, region: str, source: AwsCredentials) -> None:
        self.region = region
        self.source = source

    async def headers(self, url: str, body: bytes, accept: str) -> dict[str, str]:
        """The headers to send: Content-Type, Accept, X-Amz-Date, X-Amz-Security-Token (temporary credentials)
        and Authorization, all of them signed."""
        frozen = await self.source.frozen()
        request = AWSRequest(method="POST", url=url, data=body,
                             headers={"Content-Type": "application/json", "Accept": accept})
        SigV4Auth(frozen, SIGNING_NAME, self.region).add_auth(request)
        return dict(request.headers.items())


class AwsCredentials:
    """The process's AWS credentials: found once, refreshed in a thread when botocore says they are due."""

    def __init__(self, chain: Callable[[], Credentials | None] = _default_chain) -> None:
        self._chain = chain
        self._credentials: Credentials | None = None
        self._lock = asyncio.Lock()

    async def frozen(self) -> ReadOnlyCredentials:
        credentials = self._credentials
        if credentials is None or _due(credentials):
            async with self._lock:  # one lookup or refresh at a time; the others wait for its result
                credentials = self._credentials
                try:
                    if credentials is None:
                        credentials = self._credentials = await asyncio.to_thread(self._chain)
                        if credentials is None:
                            raise NoAwsCredentials("no AWS credentials found (IRSA role, environment or profile)")
                    if _due(credentials):
                        return await asyncio.to_thread(credentials.get_frozen_credentials)
                except (BotoCoreError, ClientError) as exc:
                    # The next call tries again; botocore keeps unexpired credentials through an advisory failure.
                    raise NoAwsCredentials(f"AWS credentials could not be refreshed: {exc}") from None
        result: Any = credentials.get_frozen_credentials()  # not due: no I/O
        return result  # type: ignore[no-any-return]


def _due(credentials: Credentials) -> bool:
    return isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed()
