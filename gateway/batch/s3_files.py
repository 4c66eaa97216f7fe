"""S3FileStore: batch file contents in the residency zone's S3 bucket (`batch.files.s3`), encrypted with SSE-KMS.

The Pulumi program creates the bucket (infra/components/batch_files.py) and renders its name, region, prefix and key
into every gateway of the zone. boto3 blocks, so each call runs in a thread (`asyncio.to_thread`); its client is
thread-safe (https://boto3.amazonaws.com/v1/documentation/api/latest/guide/clients.html#multithreading-or-multiprocessing-with-clients).
Credentials are boto3's defaults: the gateway pod's IRSA role in EKS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.batch.file_names import FileMissing, check_name

if TYPE_CHECKING:
    from botocore.client import BaseClient

# S3's answers for a key that is not there: NoSuchKey from GetObject, a bare 404 from HeadObject. The gateway role
# may list its prefix, so a missing key is a 404 and never the 403 S3 gives a caller without s3:ListBucket
# (GetObject API reference, "Permissions"): a 403 here is a real denial and is raised as one.
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
PART_BYTES = 16 * 1024 * 1024  # a staged file is sent in parts of this size: 200 MB in 13, 16 MB held at a time


class S3Location(Protocol):
    """What the store needs of `batch.files.s3` (gateway/config/batch.py S3Files)."""

    @property
    def bucket(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def prefix(self) -> str: ...

    @property
    def kms_key_id(self) -> str | None: ...


class FileStoreError(Exception):
    """S3 refused or failed a call (not a missing file): the message names the bucket, the key and S3's code."""


class S3FileStore:
    """Contents under `<prefix><file id>` in one bucket; the client's region is the bucket's."""

    max_attempts = 5  # per call, the first included (botocore's standard retry mode)

    def __init__(self, location: S3Location, endpoint_url: str | None = None) -> None:
        self.bucket = location.bucket
        self.region = location.region
        self.prefix = location.prefix
        self.kms_key_id = location.kms_key_id
        self.endpoint_url = endpoint_url  # tests and S3-compatible stores; None: AWS's regional endpoint
        self._client: BaseClient | None = None

    async def open(self) -> None:
        self._client = await asyncio.to_thread(self._make_client)

    def _make_client(self) -> BaseClient:
        import boto3
        from botocore.config import Config

        # Standard retries back off on throttling (503 SlowDown) and transient errors
        # (https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html).
        config = Config(retries={"mode": "standard", "max_attempts": self.max_attempts}, connect_timeout=5,
                        read_timeout=60)
        # The bucket's region, never the pod's: a zone's bucket lives in its first region, and the gateways of the
        # zone's other regions call it there (AWS_REGION, which EKS sets to the pod's region, is not consulted when
        # region_name is given).
        client: BaseClient = boto3.client("s3", region_name=self.region, endpoint_url=self.endpoint_url,
                                          config=config)
        return client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def key(self, name: str) -> str:
        return f"{self.prefix}{check_name(name)}"

    @property
    def client(self) -> Any:
        if self._client is None:
            raise FileStoreError(f"the S3 file store of bucket {self.bucket} is not open")
        return self._client

    def _encryption(self) -> dict[str, Any]:
        # Asked for on every PUT, not only left to the bucket's default: an object is never written under another
        # key than the one the config names, whatever the bucket's default says.
        encryption: dict[str, Any] = {"ServerSideEncryption": "aws:kms", "BucketKeyEnabled": True}
        if self.kms_key_id:
            encryption["SSEKMSKeyId"] = self.kms_key_id
        return encryption

    async def put(self, name: str, data: bytes) -> None:
        await self._call("put", name, self.client.put_object, Bucket=self.bucket, Key=self.key(name), Body=data,
                         **self._encryption())

    async def put_file(self, name: str, staged: Path) -> None:
        """A staged file (an upload, an output file) sent from disk a part at a time, never read whole into memory:
        one PUT up to PART_BYTES, else a multipart upload (CreateMultipartUpload takes the same SSE-KMS arguments
        as PutObject, BucketKeyEnabled included, which boto3's managed `upload_file` does not pass on; parts of
        5 MiB or more, at most 10,000: https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await asyncio.to_thread(self._put_file, name, staged)
        except ClientError as exc:
            raise self._error("put", name, exc) from None
        except BotoCoreError as exc:
            raise FileStoreError(f"s3://{self.bucket}/{self.key(name)}: put failed: {type(exc).__name__}") from None

    def _put_file(self, name: str, staged: Path) -> None:
        key = self.key(name)
        with open(staged, "rb") as f:
            first = f.read(PART_BYTES)
            more = f.read(1)
            if not more:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=first, **self._encryption())
                return
            upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **self._encryption())
            parts: list[dict[str, Any]] = []
            try:
                chunk = first + more + f.read(PART_BYTES - 1)
                while chunk:
                    number = len(parts) + 1
                    sent = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"],
                                                   PartNumber=number, Body=chunk)
                    parts.append({"PartNumber": number, "ETag": sent["ETag"]})
                    chunk = f.read(PART_BYTES)
                self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"],
                                                      MultipartUpload={"Parts": parts})
            except BaseException:
                # An unfinished upload's parts are billed until aborted (or the bucket's lifecycle rule aborts it).
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
                raise

    async def get(self, name: str) -> bytes:
        return await asyncio.to_thread(self._get, name)

    def _get(self, name: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise FileMissing(name) from None
            raise self._error("get", name, exc) from None
        except BotoCoreError as exc:  # unreachable, timed out, or the body cut off while read
            raise self._failed("get", name, exc) from None
        return body

    async def reader(self, name: str) -> Callable[[int], Awaitable[bytes]]:
        """The object opened for reading a chunk at a time (`await read(n)`, b"" at its end), for a download that
        must not hold a GB output file in memory; FileMissing or FileStoreError before any byte is sent."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = (await asyncio.to_thread(self.client.get_object, Bucket=self.bucket, Key=self.key(name)))["Body"]
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise FileMissing(name) from None
            raise self._error("get", name, exc) from None
        except BotoCoreError as exc:
            raise FileStoreError(f"s3://{self.bucket}/{self.key(name)}: get failed: {type(exc).__name__}") from None

        async def read(size: int) -> bytes:
            try:
                chunk: bytes = await asyncio.to_thread(body.read, size)
            except (BotoCoreError, OSError) as exc:
                body.close()
                raise FileStoreError(f"s3://{self.bucket}/{self.key(name)}: read failed: {type(exc).__name__}") \
                    from None
            if not chunk:
                body.close()
            return chunk

        return read

    async def delete(self, name: str) -> None:
        # S3 answers 204 for a key that is not there: missing is not an error, as the protocol wants.
        await self._call("delete", name, self.client.delete_object, Bucket=self.bucket, Key=self.key(name))

    async def _call(self, what: str, name: str, method: Any, **kwargs: Any) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await asyncio.to_thread(method, **kwargs)
        except ClientError as exc:
            raise self._error(what, name, exc) from None
        except BotoCoreError as exc:
            raise self._failed(what, name, exc) from None

    def _failed(self, what: str, name: str, exc: Exception) -> FileStoreError:
        return FileStoreError(f"s3://{self.bucket}/{self.key(name)}: {what} failed: {type(exc).__name__}")

    def _error(self, what: str, name: str, exc: Any) -> FileStoreError:
        return FileStoreError(f"s3://{self.bucket}/{self.key(name)}: {what} refused: {_code(exc)}")


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "ClientError"))
