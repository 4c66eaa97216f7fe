"""The ledger store's interface: virtual keys, teams, users and spend rows, in SQLite (default) or PostgreSQL.

Keys and teams live here durably, as JSON documents beside the few columns that are
queried; every replica holds them all in memory (`gateway.governance.keys.KeyCache`), so the store
is never on the request path. Spend rows are keyed by a unique record id: replaying a
spool segment twice inserts nothing twice.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.governance.keys import Team, User, VirtualKey
from gateway.governance.store.batches import BatchRows
from gateway.governance.store.replication import Cursor, PeerRecord


class StoreError(Exception):
    """The store could not be reached or refused the operation."""


class Conflict(StoreError):
    """The row already exists (a key or team id given twice)."""


class BadRows(StoreError):
    """The store refused a batch for its data (a value out of range, malformed), not for being unreachable:
    sending it again fails again, so the ledger splits it and sets the bad rows aside."""


class LedgerStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def key_fingerprint(self) -> tuple[int, int]: ...

    def batches(self) -> BatchRows:
        """The Batch API's files, batches and lines (gateway.governance.store.batches)."""
        ...

    async def load_keys(self) -> tuple[list[VirtualKey], list[Team]]: ...

    async def insert_key(self, key: VirtualKey) -> None: ...

    async def update_key(self, key: VirtualKey) -> None: ...

    async def get_key(self, token: str) -> tuple[VirtualKey, bool] | None: ...

    async def find_tokens_by_alias(self, aliases: list[str]) -> list[str]: ...

    async def revoke_keys(self, tokens: list[str]) -> list[str]: ...

    async def list_keys(self, team_id: str | None) -> list[tuple[VirtualKey, bool]]: ...

    async def insert_team(self, team: Team) -> None: ...

    async def update_team(self, team: Team) -> None: ...

    async def get_team(self, team_id: str) -> Team | None: ...

    async def list_teams(self) -> list[Team]: ...

    async def insert_user(self, user: User) -> None: ...

    async def update_user(self, user: User) -> None: ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def find_user_by_email(self, email: str) -> User | None: ...

    async def list_users(self) -> list[User]: ...

    async def delete_users(self, user_ids: list[str]) -> list[str]:
        """Delete these users and their team memberships; the ids that existed."""
        ...

    async def put_member(self, team_id: str, user_id: str, role: str, user_email: str | None,
                         max_budget_in_team: float | None, now: float) -> None:
        """Add a user to a team, or change its role there."""
        ...

    async def remove_member(self, team_id: str, user_id: str) -> bool: ...

    async def members(self, team_id: str | None = None, user_id: str | None = None) -> list[dict[str, Any]]:
        """Memberships of one team, or of one user (`MEMBER_COLUMNS` as a dict each)."""
        ...

    async def spend_grouped(self, columns: tuple[str, ...], filters: dict[str, str]) -> list[dict[str, Any]]:
        """Spend summed per distinct value of `columns`; filters: start, end (days), key_token, team_id, user_id,
        request_id."""
        ...

    async def spend_rows(self, filters: dict[str, str], limit: int) -> list[dict[str, Any]]: ...

    async def insert_spend(self, lines: list[bytes]) -> int:
        """Insert spend records (JSON objects, one per line of the spool), ignoring ids already present;
        the number inserted."""
        ...

    async def spend_since(self, column: str, since: float, ids: list[str]) -> dict[str, float]:
        """Spend recorded since `since` (Unix seconds) per `key_token` or `team_id` in `ids`."""
        ...

    async def changed_since(self, after: Cursor, limit: int) -> tuple[list[PeerRecord], bool, Cursor]:
        """Keys, teams and users this store took a version of after the cursor `after` ((changed_at, kind, id)), in
        cursor order, at most `limit` (and about PAGE_BYTES); whether more are waiting; the cursor after the last
        (gateway.governance.store.replication). Rows written by older gateway code are stamped first."""
        ...

    async def merge_records(self, records: list[PeerRecord]) -> int:
        """Write each peer record where it is newer than the local version (a revocation: where the key is live), in
        one transaction; how many were."""
        ...
