"""Artifact store: one interface over a local directory / PVC mount and an S3-compatible bucket.

Every step of a round reads and writes artifacts only through this module, so the same step code runs
embedded (a local directory), in a Kubernetes Job (a PVC mounted at AGENTQ_STORE_PATH) or against
MinIO/Ceph/AWS. Writes are atomic (a reader never sees half an object) and every object carries the
sha256 recorded when it was written, checked again when it is read back, so a truncated copy or a
flipped bit on a shared volume fails loudly instead of training on garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from agentq.cache import cache_root
from agentq.config import S3Spec, StoreSpec
from agentq.io import FILE_MODE, atomic_write_text

CHUNK = 1 << 20
# Everything the store keeps for itself lives under this top-level name, never a valid key.
RESERVED = ".agentq"
# S3 directory publishes: <dir>.versions/<id>/... holds each version, <dir>.current names the one readers see.
VERSIONS = ".versions"
CURRENT = ".current"
DEFAULT_PVC_ROOT = "/artifacts"


class StoreError(RuntimeError):
    """A store operation that failed; the message names the store URL and the key."""


class StoreKeyError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class IntegrityError(StoreError):
    """An object whose bytes no longer match the sha256 recorded when it was written."""


class LeaseHeld(StoreError):
    """Another live run holds the lease (a lock with an expiry) on this key."""


def check_key(key: str, *, allow_root: bool = False) -> str:
    """Keys are '/'-separated relative paths; anything that could escape the root is refused."""
    key = key.strip("/")
    if not key:
        if allow_root:
            return ""
        raise StoreError("empty store key")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0] == RESERVED:
        raise StoreError(
            f"invalid store key {key!r}: expected a relative path without '.', '..' or {RESERVED!r}"
        )
    return key


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class Store(ABC):
    """Common interface; subclasses provide the object primitives, directory helpers are shared."""

    url: str

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Copy an object to a local path atomically, verifying its sha256."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys equal to prefix or below it (prefix is a directory, not a string prefix)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object at or below prefix; returns how many were deleted."""

    @abstractmethod
    def sha256(self, key: str) -> str | None:
        """The digest recorded when the object was written (None for objects written around the store)."""

    @abstractmethod
    def local_dir(self, prefix: str) -> Path:
        """A local directory holding the objects under prefix (for libraries that want a path)."""

    @abstractmethod
    def writing_dir(self, prefix: str) -> contextlib.AbstractContextManager[Path]:
        """Yield a not-yet-existing local path to create a directory at; publish it under prefix on success.

        The prefix's old contents are replaced only once the body has finished, so a crashed writer
        leaves the previous version (or nothing) in place, never a half-written model.
        """

    def acquire_lease(self, key: str, owner: str, ttl_s: float) -> str | None:
        """Take the lease at `key` for `ttl_s` seconds (a token for renew/release), or raise LeaseHeld.

        Only stores without a shared lock of their own need one: a directory store (a PVC) is locked with
        flock by the caller, so here it is a no-op."""
        return None

    def renew_lease(self, key: str, owner: str, token: str, ttl_s: float) -> str:
        return token

    def release_lease(self, key: str, token: str) -> None:  # noqa: B027 - a no-op unless a store needs leases
        """Give the lease up (nothing if it has passed to someone else meanwhile)."""

    def put_text(self, key: str, text: str) -> None:
        self.put_bytes(key, text.encode())

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode()

    def put_json(self, key: str, obj: Any) -> None:
        self.put_text(key, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_dir(self, prefix: str, directory: str | Path) -> list[str]:
        """Upload every file below directory; returns the keys written. Existing extra keys are kept."""
        prefix = check_key(prefix)
        directory = Path(directory)
        if not directory.is_dir():
            raise StoreError(f"{directory}: not a directory (uploading to {self.url}/{prefix})")
        keys = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(directory).as_posix()}"
            self.put_file(key, path)
            keys.append(key)
        return keys

    def get_dir(self, prefix: str, directory: str | Path) -> list[str]:
        """Download every object below prefix into directory, verifying each; returns the keys read."""
        prefix = check_key(prefix)
        keys = [k for k in self.list(prefix) if k != prefix]
        if not keys:
            raise StoreKeyError(f"{self.url}: nothing stored under {prefix!r}")
        for key in keys:
            self.get_file(key, Path(directory) / key[len(prefix) + 1 :])
        return keys

    def _missing(self, key: str) -> StoreKeyError:
        return StoreKeyError(f"{self.url}: no object {key!r}")

    def _verify(self, key: str, expected: str | None, actual: str) -> None:
        if expected is not None and expected != actual:
            raise IntegrityError(
                f"{self.url}: object {key!r} is corrupt: sha256 {actual} != {expected} recorded at write time"
            )


class FileStore(Store):
    """A directory (a local path or a mounted PVC). Digests live in a mirror tree under `.agentq/sha256`,
    so `local_dir` can hand libraries the real directory with nothing foreign in it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self._tmp = self.root / RESERVED / "tmp"
        self._sums = self.root / RESERVED / "sha256"
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{self.url}: cannot create the store directory: {err.strerror}") from None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _sum_path(self, key: str) -> Path:
        return self._sums / f"{check_key(key)}.sha256"

    def _write(self, key: str, src: IO[bytes]) -> None:
        target = self._path(key)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        os.fchmod(fd, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                while block := src.read(CHUNK):
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            # The digest goes first: visible data always has its digest beside it.
            atomic_write_text(self._sum_path(key), digest.hexdigest() + "\n")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, io.BytesIO(data))

    def put_file(self, key: str, path: str | Path) -> None:
        with open(path, "rb") as fh:
            self._write(key, fh)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise self._missing(key)
        data = path.read_bytes()
        self._verify(key, self.sha256(key), hashlib.sha256(data).hexdigest())
        return data

    def get_file(self, key: str, path: str | Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise self._missing(key)
        _copy_verified(
            path,
            lambda tmp: shutil.copyfile(src, tmp),
            lambda actual: self._verify(key, self.sha256(key), actual),
        )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        prefix = check_key(prefix, allow_root=True)
        base = self.root / prefix if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if not k.startswith(RESERVED + "/"))

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_key(prefix)
        count = len(self.list(prefix))
        for base in (self.root / prefix, self._sums / prefix, self._sums / f"{prefix}.sha256"):
            if base.is_dir():
                shutil.rmtree(base)
            else:
                base.unlink(missing_ok=True)
        return count

    def sha256(self, key: str) -> str | None:
        try:
            return self._sum_path(key).read_text().strip()
        except FileNotFoundError:
            return None

    def local_dir(self, prefix: str) -> Path:
        path = self._path(prefix)
        if not path.is_dir():
            raise StoreKeyError(f"{self.url}: no directory {check_key(prefix)!r}")
        return path

    @contextlib.contextmanager
    def writing_dir(self, prefix: str) -> Iterator[Path]:
        target = self._path(prefix)
        remove_dead_staging(self._tmp)
        staging = self._tmp / staging_name()
        staging.mkdir()
        new = staging / "new"
        try:
            yield new
            if not new.is_dir():
                raise StoreError(f"{self.url}: the writer for {prefix!r} created no directory at {new}")
            sums = {p: sha256_file(p) for p in new.rglob("*") if p.is_file()}
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir() and _exchange(new, target):
                pass  # one atomic swap: readers see the old directory or the new one, never neither
            else:
                self.delete_prefix(prefix)
                os.replace(new, target)  # same filesystem: the whole directory appears at once
            for path in [p for p in self._sums.joinpath(check_key(prefix)).rglob("*") if p.is_file()]:
                path.unlink()  # digests of the old version's files
            for path, digest in sums.items():
                key = f"{check_key(prefix)}/{path.relative_to(new).as_posix()}"
                atomic_write_text(self._sum_path(key), digest + "\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (renameat2 RENAME_EXCHANGE); False where the filesystem cannot."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    try:
        return libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), _RENAME_EXCHANGE) == 0
    except AttributeError:  # a libc without renameat2
        return False


def staging_name() -> str:
    """Staging directories carry their writer's host and pid, so a later writer can tell a dead one's."""
    return f"dir-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"


def remove_dead_staging(folder: Path) -> None:
    """Staging left by writers on this host that were killed (a kill during train or merge)."""
    host = socket.gethostname()
    for path in folder.glob(f"dir-{host}-*-*"):
        pid = path.name[len(f"dir-{host}-"):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(".writing-*"):  # S3 staging in the local cache, same naming after the prefix
        pid = path.name.split("-")[1] if path.name.count("-") >= 2 else ""
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(path, ignore_errors=True)


def _copy_verified(dest: str | Path, fetch: Any, verify: Any) -> None:
    """Fetch into a temporary file beside dest, check its digest, then rename: dest is whole or untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        fetch(tmp)
        verify(sha256_file(tmp))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class S3Store(Store):
    """An S3-compatible bucket. Uploads go through boto3's managed transfer: above the multipart threshold
    an object becomes visible only when CompleteMultipartUpload succeeds, so a killed uploader leaves
    nothing readable. The digest travels in the object's metadata (x-amz-meta-sha256)."""

    def __init__(
        self, spec: S3Spec, client: Any, *, cache_dir: str | Path | None = None, transfer_config: Any = None
    ) -> None:
        from boto3.s3.transfer import TransferConfig

        self.spec = spec
        self.client = client
        self.bucket = spec.bucket
        self.prefix = spec.prefix.strip("/")
        self.endpoint = spec.endpoint or "the default AWS endpoint"
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.transfer = transfer_config or TransferConfig(
            multipart_threshold=16 * CHUNK, multipart_chunksize=16 * CHUNK
        )
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "store" / self.bucket

    def _k(self, key: str, *, allow_root: bool = False) -> str:
        key = check_key(key, allow_root=allow_root)
        return "/".join(p for p in (self.prefix, key) if p)

    def _error(self, what: str, err: Exception) -> StoreError:
        return StoreError(f"S3 endpoint {self.endpoint}, bucket {self.bucket!r}: {what} failed: {err}")

    def check(self) -> None:
        """Fail at open time, not halfway through a step, when the endpoint or bucket is wrong."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as err:
            raise self._error("checking the bucket exists and is reachable", err) from None

    def _upload(self, key: str, fh: IO[bytes], digest: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_fileobj(
                fh,
                self.bucket,
                self._k(key),
                ExtraArgs={"Metadata": {"sha256": digest}},
                Config=self.transfer,
            )
        except (BotoCoreError, ClientError) as err:
            raise self._error(f"upload of {key!r}", err) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        self._upload(key, io.BytesIO(data), hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: str | Path) -> None:
        digest = sha256_file(path)  # metadata is fixed when the upload starts, so hash first
        with open(path, "rb") as fh:
            self._upload(key, fh, digest)

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error(f"reading {key!r}", err) from None
        except BotoCoreError as err:
            raise self._error(f"reading {key!r}", err) from None

    def _head_or_missing(self, key: str) -> dict:
        head = self._head(key)
        if head is None:
            raise self._missing(key)
        return head

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            data = obj["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                located = self._versioned(key)
                if located is not None:
                    return self.get_bytes(located)
                raise self._missing(key) from None
            raise self._error(f"reading {key!r}", err) from None
        except BotoCoreError as err:
            raise self._error(f"reading {key!r}", err) from None
        self._verify(key, obj.get("Metadata", {}).get("sha256"), hashlib.sha256(data).hexdigest())
        return data

    def get_file(self, key: str, path: str | Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        head = self._head(key)
        if head is None and (located := self._versioned(key)) is not None:
            key, head = located, self._head(located)
        expected = (head or self._head_or_missing(key)).get("Metadata", {}).get("sha256")

        def fetch(tmp: str) -> None:
            try:
                self.client.download_file(self.bucket, self._k(key), tmp, Config=self.transfer)
            except (BotoCoreError, ClientError) as err:
                raise self._error(f"download of {key!r}", err) from None

        _copy_verified(path, fetch, lambda actual: self._verify(key, expected, actual))

    def exists(self, key: str) -> bool:
        return self._head(key) is not None or self._versioned(key) is not None

    # ---- directories published by writing_dir: <dir>.versions/<id>/..., made current by <dir>.current ----

    def _json_object(self, key: str, what: str) -> tuple[Any, str] | None:
        """(parsed JSON, ETag) of a small control object (a pointer, a lease), or None when there is none."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            return json.loads(obj["Body"].read()), obj["ETag"]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise self._error(f"reading {what}", err) from None
        except (BotoCoreError, ValueError) as err:
            raise self._error(f"reading {what}", err) from None

    def _pointer(self, directory: str) -> dict[str, Any] | None:
        """The published version of `directory` ({"version", "files": {relative: sha256}}), if any."""
        found = self._json_object(directory + CURRENT, repr(directory + CURRENT))
        pointer = found[0] if found else None
        return pointer if isinstance(pointer, dict) and isinstance(pointer.get("files"), dict) else None

    def _versioned(self, key: str) -> str | None:
        """Where `key` lives when it is a file of a published directory (only asked once the key is missing)."""
        parts = check_key(key).split("/")
        for i in range(len(parts) - 1, 0, -1):
            directory, relative = "/".join(parts[:i]), "/".join(parts[i:])
            pointer = self._pointer(directory)
            if pointer is not None:
                return f"{directory}{VERSIONS}/{pointer['version']}/{relative}" if relative in pointer["files"] \
                    else None
        return None

    # ---- leases: conditional writes (If-None-Match / If-Match), so two writers can never both win ----

    def _lease_put(self, key: str, owner: str, ttl_s: float, **condition: str) -> str | None:
        """Write the lease if the condition holds: its new ETag, or None when another write won."""
        from botocore.exceptions import BotoCoreError, ClientError

        body = json.dumps({"owner": owner, "expires": time.time() + ttl_s}).encode()
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=body, **condition)["ETag"]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                                             "NoSuchKey", "404"):
                return None
            raise self._error(f"writing the lease {key!r}", err) from None
        except BotoCoreError as err:
            raise self._error(f"writing the lease {key!r}", err) from None

    def _lease_read(self, key: str) -> tuple[dict[str, Any], str] | None:
        return self._json_object(key, f"the lease {key!r}")

    def acquire_lease(self, key: str, owner: str, ttl_s: float) -> str | None:
        token = self._lease_put(key, owner, ttl_s, IfNoneMatch="*")
        if token is not None:
            return token
        current = self._lease_read(key)
        if current is None:  # released between our two requests
            return self.acquire_lease(key, owner, ttl_s)
        holder, etag = current
        if holder.get("owner") != owner and float(holder.get("expires", 0)) > time.time():
            when = time.strftime("%H:%M:%S", time.localtime(float(holder["expires"])))
            raise LeaseHeld(f"{self.url}/{key} is held by {holder.get('owner')} (renewed until {when})")
        token = self._lease_put(key, owner, ttl_s, IfMatch=etag)  # expired (its holder died): take it over
        if token is None:
            raise LeaseHeld(f"{self.url}/{key} was taken by another run at the same moment")
        return token

    def renew_lease(self, key: str, owner: str, token: str, ttl_s: float) -> str:
        renewed = self._lease_put(key, owner, ttl_s, IfMatch=token)
        if renewed is None:
            raise LeaseHeld(f"{self.url}/{key}: lease lost (it expired and another run took it)")
        return renewed

    def release_lease(self, key: str, token: str) -> None:
        current = self._lease_read(key)
        if current is not None and current[1] == token:
            self._delete_raw([self._k(key)])

    def _delete_raw(self, keys: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for i in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[i : i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        except (BotoCoreError, ClientError) as err:
            raise self._error(f"deleting {len(keys)} objects", err) from None

    def _list_raw(self, prefix: str) -> list[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._k(prefix, allow_root=True)
        query = full + "/" if full else ""
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=query
            ):
                found.extend(page.get("Contents", []))
            if prefix and (head := self._head(prefix)) is not None:
                found.append({"Key": full, "ETag": head.get("ETag")})
        except (BotoCoreError, ClientError) as err:
            raise self._error(f"listing {prefix!r}", err) from None
        return found

    def list(self, prefix: str = "") -> list[str]:
        """Keys as readers see them: a published directory's files under its own name, never its versions."""
        cut = len(self.prefix) + 1 if self.prefix else 0
        prefix = check_key(prefix, allow_root=True)
        found: set[str] = set()
        for key in (obj["Key"][cut:] for obj in self._list_raw(prefix)):
            if any(part.endswith(VERSIONS) for part in key.split("/")[:-1]):
                continue
            if key.endswith(CURRENT):
                directory = key[: -len(CURRENT)]
                found |= {f"{directory}/{rel}" for rel in (self._pointer(directory) or {"files": {}})["files"]}
            else:
                found.add(key)
        parts = prefix.split("/") if prefix else []
        for i in range(len(parts), 0, -1):  # the prefix is (inside) a published directory
            directory = "/".join(parts[:i])
            pointer = self._pointer(directory)
            if pointer is not None:
                found |= {f"{directory}/{rel}" for rel in pointer["files"]}
                break
        return sorted(k for k in found if not prefix or k == prefix or k.startswith(prefix + "/"))

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_key(prefix)
        keys = [obj["Key"] for obj in self._list_raw(prefix)]
        keys += [obj["Key"] for obj in self._list_raw(prefix + VERSIONS)]
        if self._head(prefix + CURRENT) is not None:
            keys.append(self._k(prefix + CURRENT))
        self._delete_raw(keys)
        return len(keys)

    def sha256(self, key: str) -> str | None:
        head = self._head(key)
        if head is None:
            located = self._versioned(key)
            return None if located is None else self.sha256(located)
        return head.get("Metadata", {}).get("sha256")

    def local_dir(self, prefix: str) -> Path:
        """Mirror prefix into the cache, downloading only objects whose digest changed since last time."""
        prefix = check_key(prefix)
        keys = [k for k in self.list(prefix) if k != prefix]
        if not keys:
            raise StoreKeyError(f"{self.url}: no directory {prefix!r}")
        local = self.cache_dir / (self.prefix or "") / prefix
        manifest_path = local.parent / f".{local.name}.sha256.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
        wanted = {}
        for key in keys:
            rel = key[len(prefix) + 1 :]
            digest = self.sha256(key)
            if manifest.get(rel) != digest or digest is None or not (local / rel).is_file():
                self.get_file(key, local / rel)
            wanted[rel] = digest
        for path in [p for p in local.rglob("*") if p.is_file()]:
            if path.relative_to(local).as_posix() not in wanted:
                path.unlink()
        atomic_write_text(manifest_path, json.dumps(wanted, sort_keys=True))
        return local

    @contextlib.contextmanager
    def writing_dir(self, prefix: str) -> Iterator[Path]:
        """Upload to `<prefix>.versions/<new id>/`, then switch `<prefix>.current` to it (one PUT: readers see
        the old version or the new one, never a mix), then delete the old version. Versions that no pointer
        names (a failed or killed publish) are deleted by the next publish."""
        prefix = check_key(prefix)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(self.cache_dir)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=f".writing-{os.getpid()}-") as staging:
            new = Path(staging) / "new"
            yield new
            if not new.is_dir():
                raise StoreError(f"{self.url}: the writer for {prefix!r} created no directory at {new}")
            version = uuid.uuid4().hex
            base = f"{prefix}{VERSIONS}/{version}"
            try:
                keys = self.put_dir(base, new)
            except BaseException:
                with contextlib.suppress(StoreError):
                    self._delete_raw([obj["Key"] for obj in self._list_raw(base)])
                raise
            files = {k[len(base) + 1 :]: sha256_file(new / k[len(base) + 1 :]) for k in keys}
            self.put_json(prefix + CURRENT, {"version": version, "files": files})
            stale = [obj["Key"] for obj in self._list_raw(prefix)]  # objects of the pre-pointer layout
            stale += [obj["Key"] for obj in self._list_raw(prefix + VERSIONS)
                      if not obj["Key"].startswith(self._k(base) + "/")]
            self._delete_raw(stale)


def _s3_client(spec: S3Spec) -> Any:
    import boto3
    from botocore.config import Config

    region = (
        spec.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    )
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=spec.endpoint, region_name=region, config=config)


def open_store(spec: StoreSpec, *, pvc_root: str | None = None, **s3_options: Any) -> Store:
    """The store a round's spec names. A PVC is whatever directory the Job mounted it at
    (pvc_root, else env AGENTQ_STORE_PATH, else /artifacts); S3 credentials come from the environment."""
    if spec.path is not None:
        return FileStore(spec.path)
    if spec.pvc is not None:
        return FileStore(pvc_root or os.environ.get("AGENTQ_STORE_PATH") or DEFAULT_PVC_ROOT)
    assert spec.s3 is not None  # StoreSpec validates exactly one
    store = S3Store(spec.s3, _s3_client(spec.s3), **s3_options)
    store.check()
    return store
