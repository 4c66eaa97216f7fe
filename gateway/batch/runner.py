"""Runs batches: claims them from the ledger store under a lease, checks their input, runs their lines through the
governor, and writes their output and error files.

Several replicas share one store: a replica runs a batch only while it holds its lease (owner and expiry, renewed
every third of `batch.lease_seconds`, timed by the store's clock); a replica that dies leaves its lease to expire, and
another (or itself, restarted) takes the batch over. A line is done when its row is in the store (written with its
spend row, in one transaction, by the lease's holder only): a batch taken over re-runs only the lines without one,
and a replica that lost its lease (paused, then resumed) writes nothing more.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from gateway.batch.files import FileMissing, FileStore, put_path, scratch
from gateway.batch.governor import Governor
from gateway.batch.line_call import LineCall
from gateway.batch.lines import Line, error, read_lines
from gateway.config.native import GatewayConfig
from gateway.governance.gate import Governance
from gateway.governance.store.batches import BatchRows, LeaseLost
from gateway.governance.store.protocol import StoreError
from gateway.tasks import cancel

POLL_S = 1.0  # how often a replica looks for batches to run (a create or cancel here wakes it at once)
MAX_JOBS = 4  # batches one replica runs at once (each has its own concurrency)
GAUGE_S = 15.0  # how often the llmp_batches gauge is read from the store
RESULTS_PAGE = 1000  # lines read from the store at a time to assemble an output file
WATCH_S = 1.0  # how often a running batch reads its status again (a cancel made on another replica)


def output_file_id(batch_id: str, kind: str) -> str:
    """The same id on every run of a batch's finalizing step: a re-run after a crash overwrites, never adds."""
    return "file-" + hashlib.blake2b(f"{batch_id}:{kind}".encode(), digest_size=12).hexdigest()


class BatchRunner:
    def __init__(self, state: Any, config: GatewayConfig, gate: Governance, rows: BatchRows, files: FileStore,
                 metrics: Any) -> None:
        assert config.batch is not None
        self.state = state
        self.config = config
        self.settings = config.batch
        self.rows = rows
        self.files = files
        self.metrics = metrics
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.in_flight: Counter[str] = Counter()
        self.calls = LineCall(state, gate, rows, self.settings.price_fraction, self.in_flight, metrics, self.owner)
        self.jobs: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._gauge_at = 0.0

    def event(self, name: str, **fields: Any) -> None:
        self.state.log.event(name, **fields)

    def poke(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel(self._task)
        for task in list(self.jobs.values()):  # lines in flight are dropped unwritten: the next run runs them again
            await cancel(task)

    async def _loop(self) -> None:
        while True:
            try:
                await self._claim()
                if time.monotonic() >= self._gauge_at:
                    self._gauge_at = time.monotonic() + GAUGE_S
                    self.metrics.batch_statuses(await self.rows.status_counts())
            except StoreError as exc:
                self.event("batch_store_unavailable", error=str(exc)[:300])
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _claim(self) -> None:
        if len(self.jobs) >= MAX_JOBS:
            return
        now = await self.rows.clock()
        for batch_id in await self.rows.claimable(now, MAX_JOBS):
            if batch_id in self.jobs or len(self.jobs) >= MAX_JOBS:
                continue
            if await self.rows.claim(batch_id, self.owner, now, now + self.settings.lease_seconds):
                self.event("batch_claimed", batch=batch_id, owner=self.owner)
                self.jobs[batch_id] = asyncio.get_running_loop().create_task(self._job(batch_id))

    async def _job(self, batch_id: str) -> None:
        try:
            await BatchJob(self, batch_id).run()
        except StoreError as exc:  # the lease runs out and the batch is taken up again, here or elsewhere
            self.event("batch_store_unavailable", batch=batch_id, error=str(exc)[:300])
        except LeaseLost:  # another replica holds it now (this one was paused past its lease): it finishes the batch
            self.event("batch_lease_lost", batch=batch_id, owner=self.owner)
        except Exception as exc:  # noqa: BLE001 - a bug of ours: logged; the lease is released and the batch retried
            self.event("batch_run_failed", batch=batch_id, error=f"{type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(POLL_S)
        finally:
            self.jobs.pop(batch_id, None)
            try:
                await self.rows.release(batch_id, self.owner)
            except StoreError:
                pass  # it expires instead
            self.poke()


class BatchJob:
    """One claim of one batch, from wherever its last run left it to a final status (or the lease lost)."""

    def __init__(self, runner: BatchRunner, batch_id: str) -> None:
        self.runner = runner
        self.rows = runner.rows
        self.id = batch_id
        self.cancelled = self.expired = self.lost = False
        self.row: dict[str, Any] = {}
        self.doc: dict[str, Any] = {}

    def stopping(self) -> bool:
        return self.cancelled or self.expired or self.lost

    async def _load(self) -> str:
        row = await self.rows.get_batch(self.id)
        if row is None:
            self.lost = True
            return "gone"
        self.row, self.doc = row, orjson.loads(row["doc"])
        self.cancelled = self.cancelled or row["status"] == "cancelling"
        self.expired = self.expired or (row["status"] in ("validating", "in_progress")
                                        and await self.rows.clock() >= float(self.doc["expires_at"]))
        return str(row["status"])

    async def _move(self, status: str, only_from: tuple[str, ...], **fields: Any) -> bool:
        doc = {**self.doc, "status": status, **fields}
        if await self.rows.set_batch(self.id, status, orjson.dumps(doc).decode(), only_from):
            self.doc = doc
            return True
        await self._load()  # moved meanwhile (cancelled): the caller decides again from what is there
        return False

    async def run(self) -> None:
        status = await self._load()
        if status == "validating" and not self.stopping():
            data = await self._input()
            if data is None:
                return
            # Off the event loop: 150 MB of lines take a second to check, a second no interactive call may wait.
            lines, errors = await asyncio.to_thread(read_lines, data, self.doc["endpoint"], self.runner.config)
            total = len(lines)
            del data, lines  # read again, line by line, to run: not held twice
            now = int(time.time())
            if errors:
                await self._move("failed", ("validating",), failed_at=now, errors={"object": "list", "data": errors})
                self.runner.event("batch_failed", batch=self.id, errors=len(errors))
                return
            moved = await self._move("in_progress", ("validating",), in_progress_at=now, total=total)
            if not moved and self.row.get("status") != "cancelling":
                return
        if self.row["status"] not in ("validating", "in_progress", "cancelling", "finalizing"):
            return
        watch = asyncio.get_running_loop().create_task(self._watch())
        try:
            await self._lines()
        finally:
            await cancel(watch)
        if not self.lost:
            await self._finalize()

    async def _input(self) -> bytes | None:
        try:
            return await self.runner.files.get(self.doc["input_file_id"])
        except FileMissing:
            await self._move("failed", ("validating",), failed_at=int(time.time()), errors={"object": "list", "data": [
                error("file_missing", f"The input file {self.doc['input_file_id']} was deleted before the batch ran.",
                      None, "input_file_id")]})
            return None

    async def _watch(self) -> None:
        """Renew the lease; notice a cancel (from any replica) within a second, and the completion window's end."""
        lease = self.runner.settings.lease_seconds
        tick = min(WATCH_S, lease / 3)
        renew_at = time.monotonic() + lease / 3
        while True:
            await asyncio.sleep(tick)
            try:
                if time.monotonic() >= renew_at:
                    renew_at = time.monotonic() + lease / 3
                    now = await self.rows.clock()
                    if not await self.rows.claim(self.id, self.runner.owner, now, now + lease):
                        self.lost = True
                        self.runner.event("batch_lease_lost", batch=self.id, owner=self.runner.owner)
                        return
                await self._load()
            except StoreError as exc:
                self.runner.event("batch_store_unavailable", batch=self.id, error=str(exc)[:300])

    async def _lines(self) -> None:
        data = b""
        if self.row["status"] != "finalizing":  # finalizing: every line is done already
            try:
                data = await self.runner.files.get(self.doc["input_file_id"])
            except FileMissing:  # deleted while the batch ran: the lines left cannot run; what ran is kept
                self.cancelled = True
                self.runner.event("batch_input_missing", batch=self.id, file=self.doc["input_file_id"])
        lines, _ = await asyncio.to_thread(read_lines, data, self.doc["endpoint"], self.runner.config, True) \
            if data else ([], [])
        del data  # the lines hold their own bytes
        done = await self.rows.done_lines(self.id)
        todo = [line for line in lines if line.custom_id not in done]
        router = self.runner.state.router
        pools = {alias: list(route.deployments) for alias in {line.alias for line in todo}
                 if (route := router.route(alias)) is not None}
        governor = Governor(self.runner.settings.concurrency, self.runner.settings.yield_to_interactive, pools,
                            self.runner.in_flight, self.stopping)
        tasks: set[asyncio.Task[None]] = set()
        try:
            for line in todo:
                if self.stopping() or not await governor.turn():
                    break
                task = asyncio.get_running_loop().create_task(self._line(line))
                tasks.add(task)
                task.add_done_callback(_finished(tasks, governor))
            if tasks:  # cancel and expiry let lines in flight finish
                await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        if governor.paused_s:
            self.runner.event("batch_yielded", batch=self.id, paused_s=round(governor.paused_s, 3))
        if self.cancelled and not self.lost and self.doc.get("in_progress_at") is not None:  # not when validating
            await self._fail_rest(todo, "batch_cancelled", "The batch was cancelled before this request executed.")
        elif self.expired and not self.lost:
            await self._fail_rest(todo, "batch_expired", "This request could not be executed before the completion "
                                  "window expired.")
        elif not self.stopping():
            # A line whose result could not be written (the store was down) is not done: no output without it.
            left = len(todo) - len(await self.rows.done_lines(self.id) & {line.custom_id for line in todo})
            if left:
                self.runner.event("batch_lines_unwritten", batch=self.id, lines=left, effect="run again")
                raise StoreError(f"{left} lines of batch {self.id} could not be written")

    async def _line(self, line: Line) -> None:
        try:
            await self.runner.calls.run(self.doc | self.row, line)
        except LeaseLost:  # taken over (this replica was paused or cut off past its lease): the holder runs the rest
            if not self.lost:
                self.runner.event("batch_lease_lost", batch=self.id, owner=self.runner.owner)
            self.lost = True

    async def _fail_rest(self, todo: list[Line], code: str, message: str) -> None:
        """OpenAI's cancel and expiry: every line not run goes to the error file with `response: null` and the
        reason (`batch_cancelled`, `batch_expired`: openapi.yaml `BatchRequestOutput.error.code`,
        https://platform.openai.com/docs/guides/batch#batch-expiration), so every custom_id is answered once."""
        done = await self.rows.done_lines(self.id)
        for line in todo:
            if line.custom_id not in done:
                result = {"id": f"batch_req_{code.removeprefix('batch_')}_{line.number}", "custom_id": line.custom_id,
                          "response": None, "error": {"code": code, "message": message}}
                await self.rows.finish_line(self.id, line.custom_id, line.number, False,
                                            orjson.dumps(result).decode(), None, self.runner.owner)

    async def _finalize(self) -> None:
        now = int(time.time())
        final = "cancelled" if self.cancelled else "expired" if self.expired else "completed"
        if final == "completed" and self.row["status"] != "finalizing" and \
                not await self._move("finalizing", ("in_progress",), finalizing_at=now):
            final = "cancelled" if self.cancelled else "expired" if self.expired else ""
            if not final:
                return
        ids: dict[str, str | None] = {}
        for kind, ok in (("output", True), ("error", False)):
            ids[kind] = await self._write(kind, ok)
        moved = await self._move(final, ("validating", "in_progress", "finalizing", "cancelling"),
                                 **{f"{final}_at": now}, output_file_id=ids["output"], error_file_id=ids["error"])
        if moved:
            completed, failed = await self.rows.line_counts(self.id)
            self.runner.event("batch_" + final, batch=self.id, completed=completed, failed=failed)

    async def _write(self, kind: str, ok: bool) -> str | None:
        """The output (ok) or error file, assembled a page of lines at a time in a staged file (50,000 answers are
        never held at once); its id, None when no line belongs in it."""
        file_id = output_file_id(self.id, kind)
        staged = scratch(self.runner.files)
        try:
            size, after = 0, 0
            out = await asyncio.to_thread(open, staged, "wb")
            try:
                while page := await self.rows.results(self.id, ok, after, RESULTS_PAGE):
                    after = page[-1][0]
                    data = "".join(f"{result}\n" for _, result in page).encode()
                    size += len(data)
                    await asyncio.to_thread(out.write, data)
            finally:
                await asyncio.to_thread(out.close)
            if not size:
                return None
            await put_path(self.runner.files, file_id, staged)
        finally:
            staged.unlink(missing_ok=True)
        await self.rows.insert_file({"id": file_id, "key_token": self.row["key_token"], "team_id": self.row["team_id"],
                                     "purpose": "batch_output", "filename": f"{self.id}_{kind}.jsonl",
                                     "bytes": size, "created_at": time.time()})
        return file_id


def _finished(tasks: set[asyncio.Task[None]], governor: Governor) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        governor.done()
    return done
