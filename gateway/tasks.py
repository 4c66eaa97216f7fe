"""Background tasks of the gateway (refreshers, flushers): stopping one cleanly."""

from __future__ import annotations

import asyncio


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a loop task and wait until it has stopped; its CancelledError is the expected end."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
