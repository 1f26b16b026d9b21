"""Where a store lives: a local path (or ``file://`` URL), or an fsspec URL (``s3://``,
``memory://``, …) opened through zarr's ``FsspecStore``; opening its root group, listing a prefix
in one request, and one-line errors for a store that is missing or cannot be reached.

Credentials and endpoints come from the environment the way fsspec's backends read them; for
``s3://`` (s3fs, botocore) the standard ``AWS_*`` variables and ``~/.aws``, with
``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for an S3-compatible server other than AWS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lohp_cli.errors import StoreError


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL of a remote (or in-memory) store; ``file://`` is local."""
    return "://" in location and not location.startswith("file://")


def local_path(location: str) -> Path | None:
    """The directory of a local store; None for a URL."""
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    return None if is_url(location) else Path(location)


def absolute_location(location: str) -> str:
    """``location`` with a local path made absolute, so that records of it work from any cwd."""
    path = local_path(location)
    return location if path is None else str(path.resolve())


def open_group(location: str, mode: str) -> Any:
    """The root group of the store at ``location``; a missing or unreachable one is a
    one-line StoreError."""
    import zarr

    from lohp_cli.store.codecs import contiguous_pcodec

    contiguous_pcodec()  # lohp's pcodec for the arrays of this store (see there)
    path = local_path(location)
    try:
        if path is not None:
            return zarr.open_group(zarr.storage.LocalStore(path), mode=mode)
        # zarr_format=3: one read of zarr.json instead of concurrent v2 probes, whose failures
        # leave "Exception ignored" noise when the store cannot be reached
        return zarr.open_group(fsspec_store(location, mode == "r"), mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        if mode == "w-":  # creating: a missing bucket
            raise unreachable(location, exc) from None
        raise StoreError(
            f"No trajectory store at '{location}'. Create one with 'lohp collect --out {location}'."
        ) from None
    except (json.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"'{location}' is not a readable Zarr store ({exc}).") from None
    except access_errors() as exc:
        raise unreachable(location, exc) from None


def fsspec_store(location: str, read_only: bool) -> Any:
    """zarr's ``FsspecStore`` for a URL; a missing backend (s3fs) is a StoreError naming it."""
    from zarr.storage import FsspecStore

    try:
        return FsspecStore.from_url(location, read_only=read_only)
    except ImportError as exc:  # fsspec names the package: "Install s3fs to access S3"
        hint = " Install it with: pip install 'lohp[s3]'." if location.startswith("s3://") else ""
        raise StoreError(f"Store '{location}' needs a missing package ({exc}).{hint}") from None
    except ValueError as exc:  # an unknown protocol
        raise StoreError(f"'{location}' is not a URL fsspec can open ({exc}).") from None


def access_errors() -> tuple[type[BaseException], ...]:
    """What a store that cannot be reached raises: a missing bucket or a refused permission
    (``OSError``), no credentials or no endpoint (botocore's errors, where it is installed)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


def unreachable(location: str, exc: BaseException) -> StoreError:
    """The one-line error of a store that cannot be reached, with what to check."""
    hint = (
        "; check the bucket, the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and, for a "
        "server other than AWS, AWS_ENDPOINT_URL"
        if location.startswith("s3://")
        else ""
    )
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return StoreError(f"Cannot access store '{location}' ({type(exc).__name__}: {reason}){hint}.")


def remote_exists(location: str) -> bool:
    """Whether a URL store has a root ``zarr.json``; an unreachable one is a StoreError."""
    from zarr.core.sync import sync

    store = fsspec_store(location, read_only=True)
    try:
        return bool(sync(store.exists("zarr.json")))
    except access_errors() as exc:
        raise unreachable(location, exc) from None


def list_dir(group: Any, prefix: str) -> list[str]:
    """Names directly under ``prefix`` of a group's store: one listing (on S3, one request per
    1,000 names), never a read per child as ``Group.group_keys`` does."""
    from zarr.core.sync import sync

    store = group.store
    fs = getattr(store, "fs", None)
    if fs is not None:  # fsspec caches listings, and other processes add runs
        fs.invalidate_cache(f"{store.path}/{prefix}")

    async def names() -> list[str]:
        return [name async for name in store.list_dir(prefix)]

    return sync(names())


@contextmanager
def init_lock(location: str) -> Iterator[None]:
    """Hold an exclusive lock on the initialisation of the store at ``location``.

    Processes that create or initialise one store at the same moment (``collect --shard``) take
    turns: the first creates it, the others open what it made. A local store is locked with
    ``flock`` on ``<store>.lock`` beside it (removed on release; a lock file left by a killed
    process is harmless). An fsspec URL has no lock: start one process on a new remote store
    first (docs/usage.md, "Collecting trajectories").
    """
    path = local_path(location)
    if path is None:
        yield
        return
    with file_lock(path.resolve().with_name(path.name + ".lock")):
        yield


@contextmanager
def file_lock(lock: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the file ``lock`` (created, and removed on release, so no lock
    file stays behind); a second process waits for the first. A waiter whose file the holder
    removed locks the file that is there now, so two holders never overlap."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # the holder before us may have removed the file we waited on: lock the new one
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
