"""A Hugging Face Hub played in-process for the weights stager's script: one repo's commits, and a log of downloads."""
from __future__ import annotations

import hashlib
import io
import sys
import types
from types import SimpleNamespace
from typing import Any

import pytest


class PlayedHub:
    """The Hub as the stager uses it (huggingface_hub 0.35): `HfApi().model_info(repo, revision=...,
    files_metadata=True)` gives the commit sha and each file's size, git blob id and, for LFS files (safetensors),
    `lfs.sha256`; `hf_hub_url` and a GET of it give the file. `commits` maps a commit sha to its files; `refs` maps a
    branch to a commit; `served` overrides what a download returns (a corrupted transfer)."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, str] = {}
        self.served: dict[str, bytes] = {}
        self.downloads: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import requests
        hub, utils = types.ModuleType("huggingface_hub"), types.ModuleType("huggingface_hub.utils")
        played = self

        class HfApi:
            def model_info(self, repo: str, revision: str | None = None, files_metadata: bool = False) -> Any:
                assert repo == played.repo and files_metadata  # digests let a retried Job skip what it copied
                sha = played.refs.get(revision or "main", revision)
                if sha not in played.commits:
                    raise LookupError(f"{repo}@{revision}: no such revision on the Hub")
                files = played.commits[sha]
                return SimpleNamespace(sha=sha, siblings=[played._sibling(n, b) for n, b in files.items()])

        hub.HfApi = HfApi  # type: ignore[attr-defined]
        hub.hf_hub_url = lambda repo, name, revision: f"https://huggingface.co/{repo}/resolve/{revision}/{name}"  # type: ignore[attr-defined]
        utils.build_hf_headers = lambda: {}  # type: ignore[attr-defined]

        class Response:
            def __init__(self, body: bytes) -> None:
                self.raw = io.BytesIO(body)

            def __enter__(self) -> Response:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def raise_for_status(self) -> None:
                return None

        def get(url: str, **kwargs: Any) -> Response:
            revision, name = url.split("/resolve/", 1)[1].split("/", 1)
            played.downloads.append(name)
            return Response(played.served.get(name, played.commits[revision][name]))

        monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
        monkeypatch.setitem(sys.modules, "huggingface_hub.utils", utils)
        monkeypatch.setattr(requests, "get", get)

    @staticmethod
    def _sibling(name: str, body: bytes) -> SimpleNamespace:
        blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
        lfs = SimpleNamespace(size=len(body), sha256=hashlib.sha256(body).hexdigest(), pointer_size=134) \
            if name.endswith(".safetensors") else None
        return SimpleNamespace(rfilename=name, size=len(body), blob_id=blob, lfs=lfs)

    def stage(self, script: str) -> int | str | None:
        """Runs the Job's own script here, as its container runs it (python -c); its exit code (0: done)."""
        self.downloads = []
        try:
            exec(compile(script, "stage", "exec"), {"__name__": "__main__"})
        except SystemExit as done:
            return done.code
        return 0
