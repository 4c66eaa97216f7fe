"""The Batch API in the app: built from the `batch:` section, its routes, its runner started and stopped with it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.batch.api import BatchApi
from gateway.batch.files import FileStore, LocalFileStore
from gateway.batch.runner import BatchRunner
from gateway.batch.s3_files import S3FileStore  # boto3 is imported only by a store that opens
from gateway.config.batch import BatchFiles
from gateway.governance.gate import Governance


def file_store(settings: BatchFiles) -> FileStore:
    """The store `batch.files` names: local disk (a laptop) or the zone's S3 bucket (a stack). Here, not in
    files.py: s3_files.py builds on files.py, and the factory needs both."""
    if settings.local_dir is not None:
        return LocalFileStore(settings.local_dir)
    assert settings.s3 is not None  # BatchFiles holds exactly one of local_dir and s3
    return S3FileStore(settings.s3)


class BatchService:
    def __init__(self, state: Any, governance: Governance) -> None:
        config = state.config
        assert config.batch is not None
        self.files = file_store(config.batch.files)
        rows = governance.store.batches()
        self.runner = BatchRunner(state, config, governance, rows, self.files, state.metrics)
        self.api = BatchApi(state, config.batch, rows, self.files, self.runner)

    def routes(self) -> list[web.RouteDef]:
        return self.api.routes()

    async def start(self) -> None:
        """After governance started (its store open, keys loaded): resumes batches left in progress."""
        await self.files.open()
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.files.close()


BATCH = web.AppKey("llmp_batch", BatchService)
