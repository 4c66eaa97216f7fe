"""The ledger store's password from a Secrets Manager secret RDS manages and rotates, re-read when it stops working.

With `manage_master_user_password`, RDS keeps the master user's credentials in a secret of its own, a JSON
object with `username` and `password`, and rotates it (every 7 days by default):
https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-secrets-manager.html. The gateway never holds the
password in its config: asyncpg asks for it at every new connection (its `password` argument may be an async
callable, asyncpg connection.py `connect`, "now accepts a callable or an async function"). The value read is kept
until PostgreSQL refuses it: then it is read again, once (a rotation happened since), and the refused call
retried (gateway/governance/store/postgres.py). Errors name the secret, never its value.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from gateway.governance.store.protocol import StoreError


class ManagedPassword:
    """`await password()` gives the current password; `forget()` makes the next call read the secret again."""

    def __init__(self, secret_arn: str, endpoint_url: str | None = None,
                 on_event: Callable[..., None] | None = None) -> None:
        self.secret_arn = secret_arn
        self.region = secret_arn.split(":")[3]  # arn:aws:secretsmanager:<region>:<account>:secret:<name>
        self.endpoint_url = endpoint_url
        self._on_event = on_event
        self._value: str | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()
        self.reads = 0

    async def __call__(self) -> str:
        async with self._lock:  # the pool opens connections side by side: one read serves them all
            if self._value is None:
                self._value = await asyncio.to_thread(self._read)
            return self._value

    def forget(self) -> None:
        """PostgreSQL refused the password: read the secret again before the next connection."""
        self._value = None
        if self._on_event is not None:
            self._on_event("store_password_reread", secret=self.secret_arn)

    def _read(self) -> str:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        if self._client is None:
            self._client = boto3.client("secretsmanager", region_name=self.region, endpoint_url=self.endpoint_url)
        self.reads += 1
        where = f"ledger.store_password_secret: cannot read secret {self.secret_arn}"
        try:
            text = self._client.get_secret_value(SecretId=self.secret_arn).get("SecretString")
        except ClientError as exc:
            raise StoreError(f"{where}: {exc.response.get('Error', {}).get('Code', 'ClientError')}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{where}: {type(exc).__name__}") from None
        try:
            password = json.loads(text or "")["password"]
        except (ValueError, TypeError, KeyError):
            password = None
        if not isinstance(password, str) or not password:
            raise StoreError(f"ledger.store_password_secret: secret {self.secret_arn} is not a JSON object with "
                             "a \"password\" (the form RDS writes)")
        return password
