"""The `batch:` section refuses what cannot run, naming the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.batch.files import LocalFileStore
from gateway.batch.s3_files import S3FileStore
from gateway.batch.service import file_store
from gateway.config.batch import BatchFiles, S3Files
from gateway.config.errors import ConfigError
from gateway.config.native import parse_native
from tests.gateway.conftest import gateway_config


def config(batch: dict[str, Any], ledger: bool = True) -> dict[str, Any]:
    doc = gateway_config(models=[
        {"alias": "chat", "deployments": [{"name": "a", "model": "m", "api_base": "http://127.0.0.1:1/v1"}]},
        {"alias": "chat-batch", "tier": "batch",
         "deployments": [{"name": "b", "model": "m", "api_base": "http://127.0.0.1:1/v1"}]},
    ])
    if ledger:
        doc["ledger"] = {"spool_dir": "/tmp/x", "store": "sqlite:///x.db"}
    doc["batch"] = batch
    return doc


@pytest.mark.parametrize("batch,ledger,message", [
    ({"files": {"local_dir": "f"}}, False, "batch: needs a 'ledger' section"),
    ({"files": {}}, True, "set exactly one of local_dir or s3"),
    ({"files": {"local_dir": "f", "s3": {"bucket": "bkt", "region": "eu-north-1"}}}, True, "exactly one"),
    ({"files": {"local_dir": "f"}, "models": {"chat": "chat"}}, True,
     "batch.models.chat: 'chat' is not a model alias with `tier: batch`"),
    ({"files": {"local_dir": "f"}, "models": {"nope": "chat-batch"}}, True, "batch.models.nope: 'nope' is not a model"),
    ({"files": {"local_dir": "f"}, "price_fraction": 1.5}, True, "price_fraction"),
    ({"files": {"local_dir": "f"}, "concurency": 2}, True, "concurency"),
])
def test_a_batch_section_that_cannot_run_is_refused_by_name(batch: dict[str, Any], ledger: bool,
                                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("*", r"\*")):
        parse_native(config(batch, ledger))


def test_a_valid_batch_section_maps_interactive_models_to_batch_tier_ones() -> None:
    parsed = parse_native(config({"files": {"local_dir": "f"}, "models": {"chat": "chat-batch"}}))
    assert parsed.batch is not None and parsed.batch.models == {"chat": "chat-batch"}
    assert parsed.batch.price_fraction == 0.5 and parsed.batch.max_lines == 50_000
    assert [m.tier for m in parsed.models] == ["interactive", "batch"]


def test_the_file_store_is_local_disk_or_the_s3_bucket_named() -> None:
    assert isinstance(file_store(BatchFiles(local_dir="f")), LocalFileStore)
    s3 = file_store(BatchFiles(s3=S3Files(bucket="bkt", region="eu-north-1", kms_key_id="alias/k")))
    assert isinstance(s3, S3FileStore)
    assert (s3.bucket, s3.region, s3.prefix, s3.kms_key_id) == ("bkt", "eu-north-1", "files/", "alias/k")


async def test_local_files_are_written_whole_and_named_only_by_file_ids(tmp_path: Any) -> None:
    from gateway.batch.files import FileMissing

    store = LocalFileStore(str(tmp_path / "files"))
    await store.open()
    await store.put("file-abc", b"one\n")
    await store.put("file-abc", b"two\n")
    assert await store.get("file-abc") == b"two\n"
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["file-abc"]  # no temporary left behind
    await store.delete("file-abc")
    await store.delete("file-abc")  # missing is not an error
    with pytest.raises(FileMissing):
        await store.get("file-abc")
    with pytest.raises(ValueError, match="not a file id"):
        await store.get("../ledger.db")
