"""The S3 file store (`batch.files.s3`) against moto's S3: contents put, read back, deleted; a missing file is
FileMissing; every object is written with SSE-KMS under the configured key; S3's refusals surface as errors naming
the object, never as a missing file."""
from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import openai
import orjson
import pytest
from moto import mock_aws

from gateway.batch.files import FileMissing, put_path
from gateway.batch.s3_files import PART_BYTES, FileStoreError, S3FileStore
from tests.gateway.test_batch import batch_config, jsonl

REGION = "eu-north-1"
BUCKET = "llmp-prod-batch-eu-20261126000000000000000001"


@dataclass(frozen=True)
class Location:
    """What the rendered config's `batch.files.s3` carries (infra/components/batch_files.py s3_settings)."""
    bucket: str
    region: str
    prefix: str
    kms_key_id: str | None


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 and KMS; yields the stack key's ARN."""
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]


async def test_a_file_is_put_read_back_and_deleted(aws: str) -> None:
    store = S3FileStore(Location(BUCKET, REGION, "files/", aws))
    await store.open()
    try:
        data = b'{"custom_id": "a", "method": "POST"}\n' * 1000
        await store.put("file-0a1b2c", data)
        assert await store.get("file-0a1b2c") == data
        # Under the prefix the gateway role's grant names, nowhere else.
        keys = [o["Key"] for o in boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET)["Contents"]]
        assert keys == ["files/file-0a1b2c"]
        await store.delete("file-0a1b2c")
        with pytest.raises(FileMissing):
            await store.get("file-0a1b2c")
    finally:
        await store.close()


async def test_a_missing_file_is_file_missing_and_deleting_it_is_no_error(aws: str) -> None:
    store = S3FileStore(Location(BUCKET, REGION, "files/", aws))
    await store.open()
    with pytest.raises(FileMissing):
        await store.get("file-neverwritten")
    await store.delete("file-neverwritten")
    await store.close()


async def test_every_object_is_written_with_sse_kms_under_the_configured_key(aws: str) -> None:
    store = S3FileStore(Location(BUCKET, REGION, "files/", aws))
    await store.open()
    await store.put("file-0a1b2c", b"{}\n")
    head = boto3.client("s3", region_name=REGION).head_object(Bucket=BUCKET, Key="files/file-0a1b2c")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == aws
    await store.close()


async def test_a_name_that_is_not_a_file_id_never_becomes_a_key(aws: str) -> None:
    store = S3FileStore(Location(BUCKET, REGION, "files/", aws))
    await store.open()
    for name in ("../weights/x", "file-a/../../b", ""):
        with pytest.raises(ValueError, match="not a file id"):
            await store.put(name, b"x")
    await store.close()


async def test_a_refusal_is_an_error_naming_the_object_not_a_missing_file(aws: str) -> None:
    store = S3FileStore(Location("llmp-prod-batch-eu-nosuchbucket", REGION, "files/", aws))
    await store.open()
    with pytest.raises(FileStoreError, match=r"s3://llmp-prod-batch-eu-nosuchbucket/files/file-a: put refused: "
                                             r"NoSuchBucket"):
        await store.put("file-a", b"x")
    with pytest.raises(FileStoreError, match="get refused: NoSuchBucket"):
        await store.get("file-a")
    await store.close()


async def test_a_store_used_before_open_says_so() -> None:
    store = S3FileStore(Location(BUCKET, REGION, "files/", None))
    with pytest.raises(FileStoreError, match="not open"):
        await store.get("file-a")


async def test_a_staged_file_is_streamed_to_s3_with_sse_kms(aws: str, tmp_path: Path) -> None:
    """Uploads and output files reach the store by path (gateway/batch/files.put_path): sent from disk in parts,
    encrypted under the configured key like any put."""
    store = S3FileStore(Location(BUCKET, REGION, "files/", aws))
    await store.open()
    try:
        staged = tmp_path / "staged"
        for size in (1000, PART_BYTES, 2 * PART_BYTES + 5):  # one PUT; one exactly; a multipart upload of three
            staged.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
            await put_path(store, "file-big", staged)
            assert await store.get("file-big") == staged.read_bytes()
            head = boto3.client("s3", region_name=REGION).head_object(Bucket=BUCKET, Key="files/file-big")
            assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == aws
            assert head["ContentLength"] == size
    finally:
        await store.close()


async def test_an_unreachable_s3_is_an_error_naming_the_object_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens at the endpoint: get, put and delete each fail with FileStoreError (what the batch runner
    reports), never with botocore's own exception escaping into the request."""
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(var, value)
    store = S3FileStore(Location(BUCKET, REGION, "files/", None), endpoint_url="http://127.0.0.1:9")
    store.max_attempts = 1
    await store.open()
    try:
        calls = {"get": lambda: store.get("file-a"), "put": lambda: store.put("file-a", b"x"),
                 "delete": lambda: store.delete("file-a")}
        for what, call in calls.items():
            with pytest.raises(FileStoreError, match=rf"s3://{BUCKET}/files/file-a: {what} failed: "
                                                     r"EndpointConnectionError"):
                await call()
    finally:
        await store.close()


async def test_a_batch_runs_on_the_s3_store_and_its_files_download_in_chunks(
        aws: str, sim: Any, gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path on S3: upload (staged, then put), the runner's read, the output file (a part at a time), and
    downloads streamed from S3 a megabyte at a time, never read whole (an output file of embeddings may be GBs)."""
    config = batch_config(sim, tmp_path)
    config["batch"]["files"] = {"s3": {"bucket": BUCKET, "region": REGION, "kms_key_id": aws}}
    gw = await gateway_factory(config)
    oai = gw.client()
    data = jsonl(5)
    uploaded = await oai.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = await oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
    for _ in range(100):
        batch = await oai.batches.retrieve(batch.id)
        if batch.status == "completed":
            break
        await asyncio.sleep(0.05)
    assert batch.status == "completed" and batch.output_file_id is not None

    async def whole(self: S3FileStore, name: str) -> bytes:
        raise AssertionError("a download read the whole object into memory")

    monkeypatch.setattr(S3FileStore, "get", whole)
    assert (await oai.files.content(uploaded.id)).content == data
    out = (await oai.files.content(batch.output_file_id)).content.splitlines()
    assert sorted(orjson.loads(x)["custom_id"] for x in out) == [f"req-{i}" for i in range(5)]
    keys = {o["Key"] for o in boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {f"files/{uploaded.id}", f"files/{batch.output_file_id}"}
    with pytest.raises(openai.NotFoundError):
        await gw.client().files.content("file-" + "0" * 24)


async def test_the_client_calls_the_buckets_region_from_a_pod_in_another(aws: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway in eu-west-2 (EKS sets AWS_REGION to the pod's region) keeps its files in the zone's bucket in
    eu-north-1: its client signs for and calls eu-north-1."""
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    store = S3FileStore(Location(BUCKET, REGION, "files/", aws))
    await store.open()
    try:
        assert store.client.meta.region_name == REGION
        assert store.client.meta.endpoint_url == f"https://s3.{REGION}.amazonaws.com"
        await store.put("file-0a1b2c", b"{}\n")
        assert await store.get("file-0a1b2c") == b"{}\n"
    finally:
        await store.close()
