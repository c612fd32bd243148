"""The S3 API client for recordings: a small typed wrapper around aiobotocore.

aiobotocore is asynchronous (aiohttp underneath), so no request ever blocks the event loop.
Every failure comes out as one `ObjectStoreError` whose message says what failed and, when it
can, what to do (wrong credentials, missing bucket, S3 unreachable).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiobotocore.session import get_session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from callbox.server.config import StorageConfig

CONNECT_TIMEOUT: Final = 5.0  # seconds
READ_TIMEOUT: Final = 60.0
GET_CHUNK_BYTES: Final = 256 * 1024
CREDENTIAL_ERRORS: Final = frozenset({
    "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken",
})


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str

    @classmethod
    def from_config(cls, storage: StorageConfig) -> S3Settings | None:
        """The settings of `[storage]`, or None when no S3 endpoint is configured."""
        if not storage.s3_endpoint:
            return None
        return cls(storage.s3_endpoint, storage.s3_bucket, storage.s3_access_key,
                   storage.s3_secret_key, storage.s3_region)


class ObjectStoreError(Exception):
    """An S3 request failed. `status` is the HTTP status S3 answered (None: no answer)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # without the quotes


class ObjectBody:
    """A GET being answered: status (200 or 206), headers, and the body read chunk by chunk.
    `close()` it when done (it holds a connection)."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.status: int = response["ResponseMetadata"]["HTTPStatusCode"]
        self.size: int = response["ContentLength"]
        self.content_range: str | None = response.get("ContentRange")
        self.etag: str | None = response.get("ETag")
        self._body = response["Body"]

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._body.iter_chunks(GET_CHUNK_BYTES):
            yield chunk

    def close(self) -> None:
        self._body.close()


def content_md5(digest: bytes) -> str:
    """The Content-MD5 header value of a body whose MD5 is `digest`."""
    return base64.b64encode(digest).decode()


class ObjectStore:
    """One bucket of an S3 API. `open()` before use, `close()` at the end."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._exit = contextlib.AsyncExitStack()
        self._client: Any = None

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    async def open(self) -> None:
        config = BotoConfig(
            s3={"addressing_style": "path"},  # the endpoint's host names no bucket
            connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
            retries={"max_attempts": 2, "mode": "standard"},
            request_checksum_calculation="when_required",  # Content-MD5 instead
            response_checksum_validation="when_required",
        )
        self._client = await self._exit.enter_async_context(get_session().create_client(
            "s3", endpoint_url=self.settings.endpoint, region_name=self.settings.region,
            aws_access_key_id=self.settings.access_key,
            aws_secret_access_key=self.settings.secret_key, config=config))

    async def close(self) -> None:
        await self._exit.aclose()
        self._client = None

    @property
    def _api(self) -> Any:
        if self._client is None:
            raise RuntimeError("ObjectStore.open() was not called")
        return self._client

    async def create_bucket(self) -> None:
        """Create the bucket (one that exists and is ours already is fine)."""
        try:
            async with self._translated("create", "the bucket"):
                await self._api.create_bucket(Bucket=self.bucket)
        except ObjectStoreError as exc:
            if exc.code != "BucketAlreadyOwnedByYou":
                raise

    async def put(self, key: str, data: bytes, md5: bytes) -> str:
        """Store `data` (S3 checks it against `md5`); returns the ETag."""
        async with self._translated("upload", key):
            response = await self._api.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentMD5=content_md5(md5))
        return str(response["ETag"]).strip('"')

    async def put_multipart(self, key: str,
                            parts: AsyncIterator[tuple[bytes, bytes]]) -> str:
        """Store the (data, md5) `parts` in order as one object; returns the ETag. A failure
        aborts the upload so no parts are left behind."""
        async with self._translated("start the multipart upload of", key):
            created = await self._api.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = created["UploadId"]
        try:
            done = []
            number = 0
            async for data, md5 in parts:
                number += 1
                async with self._translated(f"upload part {number} of", key):
                    part = await self._api.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        Body=data, ContentMD5=content_md5(md5))
                done.append({"PartNumber": number, "ETag": part["ETag"]})
            async with self._translated("complete the multipart upload of", key):
                response = await self._api.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": done})
        except BaseException:
            with contextlib.suppress(Exception):
                await self._api.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return str(response["ETag"]).strip('"')

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and ETag; None when there is no such object."""
        try:
            async with self._translated("look up", key):
                response = await self._api.head_object(Bucket=self.bucket, Key=key)
        except ObjectStoreError as exc:
            if exc.status == 404:
                return None
            raise
        return ObjectInfo(int(response["ContentLength"]), str(response["ETag"]).strip('"'))

    async def get(self, key: str, byte_range: str | None = None) -> ObjectBody:
        """Start reading the object (`byte_range`: a Range header value, passed on)."""
        extra = {"Range": byte_range} if byte_range else {}
        async with self._translated("download", key):
            response = await self._api.get_object(Bucket=self.bucket, Key=key, **extra)
        return ObjectBody(response)

    async def delete(self, key: str) -> None:
        """Remove the object (no error when it is already gone)."""
        async with self._translated("delete", key):
            await self._api.delete_object(Bucket=self.bucket, Key=key)

    @contextlib.asynccontextmanager
    async def _translated(self, action: str, key: str) -> AsyncIterator[None]:
        """Turn what the client raises into an `ObjectStoreError` that explains it."""
        where = f"{self.settings.endpoint} bucket {self.bucket!r}"
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in CREDENTIAL_ERRORS:
                message = (f"cannot {action} {key}: the S3 server at {where} refused the "
                           f"credentials ({code}); check storage.s3_access_key and "
                           f"storage.s3_secret_key")
            elif code == "NoSuchBucket":
                message = f"cannot {action} {key}: there is no bucket at {where}; create it"
            else:
                detail = error.get("Message") or code
                message = f"cannot {action} {key} at {where}: S3 answered {status} ({detail})"
            raise ObjectStoreError(message, status=status, code=code) from None
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ObjectStoreError(
                f"cannot {action} {key}: S3 at {self.settings.endpoint} is unreachable "
                f"({exc})") from None
