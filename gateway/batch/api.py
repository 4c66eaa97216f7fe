"""The /v1/files and /v1/batches endpoints (and their paths without /v1), in the shapes the openai client parses.

Files and batches belong to the key that created them and its team: another key of the team may read them, any
other caller gets 404 (never 403: existence is not leaked); the master key sees all.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from gateway.batch.files import FileMissing, FileStore, LocalFileStore, put_path, scratch
from gateway.batch.lines import ENDPOINTS, batch_object, file_object, new_id
from gateway.batch.runner import BatchRunner
from gateway.batch.s3_files import FileStoreError  # no boto3 at import: it is imported by a store that is used
from gateway.config.batch import BatchSettings
from gateway.governance.gate import MASTER_TOKEN
from gateway.governance.store.batches import BatchRows, Owner
from gateway.governance.store.protocol import StoreError
from gateway.http.body import read_json
from gateway.http.errors import GatewayError, bad_request
from gateway.http.handlers import authorization

JSON = "application/json"
# `limit` on list calls, as OpenAI's: batches 1 to 100, default 20 (https://platform.openai.com/docs/api-reference/
# batch/list); files 1 to 10,000, default 10,000, with `order` (https://platform.openai.com/docs/api-reference/files/list).
BATCH_LIST = (20, 100)
FILE_LIST = (10_000, 10_000)
CANCELLABLE = ("validating", "in_progress")


def store_down() -> GatewayError:
    return GatewayError(503, "The ledger store holding files and batches is unavailable; try again shortly.",
                        "service_unavailable", None, "store_unavailable")


def file_store_down() -> GatewayError:
    return GatewayError(503, "The file store holding file contents is unavailable; try again shortly.",
                        "service_unavailable", None, "file_store_unavailable")


def not_found(kind: str, ident: str) -> GatewayError:
    return GatewayError(404, f"No such {kind} object: {ident[:100]}", "invalid_request_error", "id")


class BatchApi:
    def __init__(self, state: Any, settings: BatchSettings, rows: BatchRows, files: FileStore,
                 runner: BatchRunner) -> None:
        self.state = state
        self.settings = settings
        self.rows = rows
        self.files = files
        self.runner = runner

    def routes(self) -> list[web.RouteDef]:
        found = []
        for prefix in ("/v1", ""):  # OpenAI clients configured without /v1, like the other endpoints
            found += [
                web.post(f"{prefix}/files", self._json(self.upload)),
                web.get(f"{prefix}/files", self._json(self.list_files)),
                web.get(prefix + "/files/{file_id}", self._json(self.get_file)),
                web.get(prefix + "/files/{file_id}/content", self.content),
                web.delete(prefix + "/files/{file_id}", self._json(self.delete_file)),
                web.post(f"{prefix}/batches", self._json(self.create)),
                web.get(f"{prefix}/batches", self._json(self.list_batches)),
                web.get(prefix + "/batches/{batch_id}", self._json(self.get_batch)),
                web.post(prefix + "/batches/{batch_id}/cancel", self._json(self.cancel)),
            ]
        return found

    def _json(self, handler: Any) -> Any:
        async def answer(http: web.Request) -> web.Response:
            try:
                return web.Response(body=orjson.dumps(await handler(http, self._owner(http))), content_type=JSON)
            except GatewayError as exc:
                return exc.response()
            except StoreError as exc:  # the ledger store is down: say so, never a traceback
                self.state.log.event("batch_store_unavailable", error=str(exc)[:300])
                return store_down().response()
            except FileStoreError as exc:  # S3 refused or failed: likewise
                self.state.log.event("batch_file_store_unavailable", error=str(exc)[:300])
                return file_store_down().response()
        return answer

    def _owner(self, http: web.Request) -> tuple[str, str | None, Owner]:
        """(key token, team id) to record on what the caller creates, and whose rows it sees (None: all)."""
        principal = self.state.auth.authenticate(authorization(http))
        key = getattr(principal, "key", None)
        if key is None:
            return MASTER_TOKEN, None, None
        return key.token, key.team_id, (key.token, key.team_id)

    @staticmethod
    def _sees(row: dict[str, Any] | None, owner: Owner) -> bool:
        return row is not None and (owner is None or row["key_token"] == owner[0]
                                    or (owner[1] is not None and row["team_id"] == owner[1]))

    # ---- files ----------------------------------------------------------------------------------

    async def upload(self, http: web.Request, who: tuple[str, str | None, Owner]) -> dict[str, Any]:
        if not http.content_type.startswith("multipart/"):
            raise bad_request("Upload a file as multipart/form-data with fields `purpose` and `file`.", "file")
        purpose, filename, size = None, None, None
        staged = scratch(self.files)  # the upload goes to disk as it arrives: never 200 MB in memory
        try:
            try:
                async for part in await http.multipart():
                    if not isinstance(part, BodyPartReader):
                        continue
                    if part.name == "purpose":
                        purpose = (await part.read_chunk(64)).decode(errors="replace").strip()
                    elif part.name == "file":
                        filename = part.filename or "upload.jsonl"
                        size = await self._read_capped(part, staged)
            except (ValueError, AssertionError, web.HTTPException) as exc:  # aiohttp's multipart parser refusing
                raise bad_request(f"The multipart body could not be read: {exc}"[:300], "file") from None
            if purpose != "batch":
                raise bad_request(f"`purpose` is {str(purpose)[:40]!r}: this gateway takes files for `batch` only.",
                                  "purpose")
            if size is None:
                raise bad_request("`file` is required.", "file")
            file_id = new_id("file-")
            row = {"id": file_id, "key_token": who[0], "team_id": who[1], "purpose": purpose,
                   "filename": (filename or "upload.jsonl")[:255], "bytes": size, "created_at": time.time()}
            await put_path(self.files, file_id, staged)
        finally:
            staged.unlink(missing_ok=True)
        await self.rows.insert_file(row)
        return file_object(row)

    async def _read_capped(self, part: BodyPartReader, staged: Path) -> int:
        """The part written to `staged` (413 past batch.max_file_bytes); its size."""
        cap = self.settings.max_file_bytes
        size = 0
        # A second part named `file` replaces the first, as a form field would.
        out = await asyncio.to_thread(open, staged, "wb")
        try:
            pending: list[bytes] = []
            while chunk := await part.read_chunk(1 << 16):
                size += len(chunk)
                if size > cap:
                    raise GatewayError(413, f"The file is over this gateway's limit of {cap} bytes "
                                       "(batch.max_file_bytes).", "invalid_request_error", "file", close=True)
                pending.append(chunk)
                if len(pending) >= 16:  # a megabyte per write, off the event loop
                    await asyncio.to_thread(out.writelines, pending)
                    pending = []
            await asyncio.to_thread(out.writelines, pending)
        finally:
            await asyncio.to_thread(out.close)
        return size

    async def _file(self, http: web.Request, owner: Owner) -> dict[str, Any]:
        ident = http.match_info["file_id"]
        row = await self.rows.get_file(ident)
        if row is None or not self._sees(row, owner):
            raise not_found("File", ident)
        return row

    async def get_file(self, http: web.Request, who: tuple[str, str | None, Owner]) -> dict[str, Any]:
        return file_object(await self._file(http, who[2]))

    async def content(self, http: web.Request) -> web.StreamResponse:
        try:
            row = await self._file(http, self._owner(http)[2])
            if isinstance(self.files, LocalFileStore):  # streamed from disk: an output file may be GBs of embeddings
                path = self.files.path(row["id"])
                if not await asyncio.to_thread(path.is_file):
                    raise FileMissing(row["id"])
                return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
            opener = getattr(self.files, "reader", None)
            if opener is None:
                data = await self.files.get(row["id"])
            else:  # streamed from the store (S3) a megabyte at a time
                read = await opener(row["id"])
                first = await read(1 << 20)
        except GatewayError as exc:
            return exc.response()
        except StoreError:
            return store_down().response()
        except FileStoreError as exc:
            self.state.log.event("batch_file_store_unavailable", error=str(exc)[:300])
            return file_store_down().response()
        except FileMissing:
            return not_found("File", http.match_info["file_id"]).response()
        if opener is None:
            return web.Response(body=data, content_type="application/octet-stream")
        answer = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await answer.prepare(http)
        chunk = first
        try:
            while chunk:
                await answer.write(chunk)
                chunk = await read(1 << 20)
        except FileStoreError as exc:  # mid-download: the status is sent; the connection is cut, the client sees it
            self.state.log.event("batch_file_store_unavailable", error=str(exc)[:300])
            raise
        await answer.write_eof()
        return answer

    async def delete_file(self, http: web.Request, who: tuple[str, str | None, Owner]) -> dict[str, Any]:
        row = await self._file(http, who[2])
        await self.rows.delete_file(row["id"])
        await self.files.delete(row["id"])
        return {"id": row["id"], "object": "file", "deleted": True}

    async def list_files(self, http: web.Request, who: tuple[str, str | None, Owner]) -> dict[str, Any]:
        after, limit = _page(http, *FILE_LIST)
        order = http.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request("`order` must be `asc` or `desc`.", "order")
        rows = await self.rows.list_files(who[2], http.query.get("purpose"), after, limit + 1, order == "desc")
        return _listing([file_object(r) for r in rows], limit)

    # ---- batches --------------------------------------------------------------------------------

    async def create(self, http: web.Request, who: tuple[str, str | None, Owner]) -> dict[str, Any]:
        _, body = await read_json(http, self.state.config.gateway.front_door)
        ident = body.get("input_file_id")
        if not isinstance(ident, str) or not ident:
            raise bad_request("`input_file_id` is required.", "input_file_id")
        row = await self.rows.get_file(ident)
        if row is None or not self._sees(row, who[2]):
            raise not_found("File", ident)
        if row["purpose"] != "batch":
            raise bad_request(f"File {ident} has purpose `{row['purpose']}`; a batch reads a `batch` file.",
                              "input_file_id")
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise bad_request(f"`endpoint` must be one of {', '.join(ENDPOINTS)}.", "endpoint")
        if body.get("completion_window") != "24h":
            raise bad_request("`completion_window` must be \"24h\".", "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items())):
            raise bad_request("`metadata` holds at most 16 pairs of strings (keys up to 64 characters, values up "
                              "to 512).", "metadata")
        # The store's clock, by which the runner judges the window's end (runner.BatchJob._load): one clock for both.
        created = await self.rows.clock()
        now = int(created)
        doc: dict[str, Any] = {
            "id": new_id("batch_"), "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": ident,
            "completion_window": "24h", "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": now, "in_progress_at": None, "expires_at": now + self.settings.completion_window_seconds,
            "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": None, "metadata": metadata, "model": None, "total": 0}
        await self.rows.insert_batch({"id": doc["id"], "key_token": who[0], "team_id": who[1],
                                      "status": "validating", "created_at": created,
                                      "doc": orjson.dumps(doc).decode()})
        self.runner.poke()
        return batch_object(doc, None)

    async def _batch(self, http: web.Request, owner: Owner) -> dict[str, Any]:
        ident = http.match_info["batch_id"]
        row = await self.rows.get_batch(ident)
        if row is None or not self._sees(row, owner):
            raise not_found("Batch", ident)
        return row

    async def _shown(self, row: dict[str, Any]) -> dict[str, Any]:
        return batch_object(orjson.loads(row["doc"]), await self.rows.line_counts(row["id"]))

    async def get_batch(self, http: web.Request, who: tuple[str, str | None, Owner]) -> dict[str, Any]:
        return await self._shown(await self._batch(http, who[2]))

    async def list_batches(self, http: web.Request, who: tuple[str, str | None, Owner]) -> dict[str, Any]:
        after, limit = _page(http, *BATCH_LIST)
        rows = await self.rows.list_batches(who[2], after, limit + 1)
        return _listing([await self._shown(r) for r in rows], limit)

    async def cancel(self, http: web.Request, who: tuple[str, str | None, Owner]) -> dict[str, Any]:
        row = await self._batch(http, who[2])
        doc = orjson.loads(row["doc"])
        if row["status"] not in CANCELLABLE:
            if row["status"] in ("cancelling", "cancelled"):
                return await self._shown(row)
            raise GatewayError(409, f"Batch {row['id']} is {row['status']}: only a validating or in-progress batch "
                               "can be cancelled.", "invalid_request_error", None, "batch_not_cancellable")
        doc.update(status="cancelling", cancelling_at=int(time.time()))
        if not await self.rows.set_batch(row["id"], "cancelling", orjson.dumps(doc).decode(), CANCELLABLE):
            return await self.cancel(http, who)  # moved meanwhile: answer from what it is now
        self.runner.poke()
        row = await self.rows.get_batch(row["id"]) or row
        return await self._shown(row)


def _page(http: web.Request, default: int, most: int) -> tuple[str | None, int]:
    raw = http.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise bad_request(f"`limit` must be a whole number from 1 to {most}.", "limit")
    return http.query.get("after") or None, int(raw)


def _listing(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    shown = data[:limit]
    return {"object": "list", "data": shown, "first_id": shown[0]["id"] if shown else None,
            "last_id": shown[-1]["id"] if shown else None, "has_more": len(data) > limit}
