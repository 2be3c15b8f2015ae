"""Read and write local paths and ``s3://`` URIs through one interface.

S3 goes through the ``minio`` client. The endpoint and credentials come from the environment,
never from config files:

=========================  ==============================================================
``KADET_S3_ENDPOINT``      ``http://host:port`` (falls back to ``AWS_ENDPOINT_URL`` and
                           ``MLFLOW_S3_ENDPOINT_URL``; default ``https://s3.amazonaws.com``)
``AWS_ACCESS_KEY_ID``      access key
``AWS_SECRET_ACCESS_KEY``  secret key
``AWS_DEFAULT_REGION``     region (default ``us-east-1``)
=========================  ==============================================================

Example::

    local = localize("s3://bucket/beir/scifact")   # downloads the prefix once, returns a Path
    publish(Path("out/"), "s3://bucket/runs/42/")  # uploads a folder

A URI shown to people or written to a file goes through :func:`mask_uri` first, so a password in
it (``http://user:password@host``) never reaches a console, a report or an export.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlparse, urlsplit, urlunsplit

from kadet.core.errors import KadetError

log = logging.getLogger(__name__)


#: Where the S3 endpoint is read from, first set wins (default AWS).
ENDPOINT_VARS = ("KADET_S3_ENDPOINT", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
DEFAULT_ENDPOINT = "https://s3.amazonaws.com"


class NoSuchPrefix(KadetError):
    """Nothing in the bucket under an ``s3://`` URI."""


def mask_uri(uri: str | os.PathLike) -> str:
    """``uri`` as it may be printed or written: a password becomes ``***``
    (``http://user:***@host``), a user alone (a token) ``***@host``, and every query value ``***``
    (``?token=***``); a path or a URI without credentials comes back unchanged. Masking twice
    changes nothing."""
    text = str(uri)
    try:
        parts = urlsplit(text)
    except ValueError:   # e.g. an unbalanced [ in the host: not a URI to mask, but hide its user part
        return text.split("://", 1)[0] + "://***" if "@" in text else text
    netloc = parts.netloc
    if "@" in netloc:
        user, colon, _ = netloc.rpartition("@")[0].partition(":")
        netloc = (f"{user}:***" if colon else "***") + "@" + netloc.rpartition("@")[2]
    query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return text
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(str(uri))
    if parsed.scheme != "s3" or not parsed.netloc:
        raise KadetError(f"{uri}: not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client():
    """A ``minio.Minio`` client configured from the environment."""
    from minio import Minio

    endpoint = next((os.environ[k] for k in ENDPOINT_VARS if os.environ.get(k)), DEFAULT_ENDPOINT)
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    keys = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    provider = None
    if not all(keys.values()):
        if os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") or os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
            from minio.credentials import IamAwsProvider

            provider = IamAwsProvider()  # a pod's IAM role (EKS IRSA / ECS): no keys in the environment
        else:
            missing = " and ".join(k for k, v in keys.items() if not v)
            hint = "" if endpoint != DEFAULT_ENDPOINT else \
                " (and KADET_S3_ENDPOINT or AWS_ENDPOINT_URL for a server other than AWS)"
            raise KadetError(f"S3: no credentials: set {missing}{hint}")
    return Minio(
        parsed.netloc,
        access_key=keys["AWS_ACCESS_KEY_ID"] if provider is None else None,
        secret_key=keys["AWS_SECRET_ACCESS_KEY"] if provider is None else None,
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        secure=parsed.scheme == "https",
        credentials=provider,
    )


def _s3_cache_root() -> Path:
    root = os.environ.get("KADET_S3_CACHE") or os.path.join(tempfile.gettempdir(), "kadet-s3")
    return Path(root)


def localize(uri: str | os.PathLike, cache_root: Path | None = None) -> Path:
    """Return a local path for ``uri``; an ``s3://`` object or prefix is downloaded first.

    A prefix (a "folder") is downloaded recursively. Objects already present locally with the
    same size and etag are not downloaded again.
    """
    if not is_s3(uri):
        return Path(uri)
    bucket, key = split_s3(str(uri))
    client = s3_client()
    dest_root = (cache_root or _s3_cache_root()) / bucket
    prefix = key.rstrip("/")
    objects = [
        o
        for o in client.list_objects(bucket, prefix=prefix, recursive=True)
        if not o.is_dir and (o.object_name == prefix or o.object_name.startswith(prefix + "/"))
    ]
    if not objects:
        raise NoSuchPrefix(f"{uri}: no such object or prefix")
    local_prefix = dest_root / prefix
    if local_prefix.is_dir():  # mirror: a file deleted from the bucket must not live on in the cache
        keep = {dest_root / o.object_name for o in objects}
        for f in [f for f in local_prefix.rglob("*") if f.is_file()]:
            if f.with_name(f.name.removesuffix(".etag")) not in keep:
                log.info("%s: no longer in the bucket, removed from the local copy", f)
                f.unlink()
    for obj in objects:
        target = dest_root / obj.object_name
        stamp = target.with_name(target.name + ".etag")
        if target.exists() and stamp.exists() and stamp.read_text() == f"{obj.etag}:{obj.size}":
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading s3://%s/%s", bucket, obj.object_name)
        client.fget_object(bucket, obj.object_name, str(target))
        stamp.write_text(f"{obj.etag}:{obj.size}")
    return dest_root / prefix


def publish(local: Path, uri: str | os.PathLike) -> str:
    """Copy a local file or folder to ``uri`` (an ``s3://`` URI or a local path)."""
    import shutil

    local = Path(local)
    if not is_s3(uri):
        dest = Path(uri)
        if local.resolve() == dest.resolve():
            return str(dest)
        if local.is_dir():
            shutil.copytree(local, dest, dirs_exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, dest)
        return str(dest)
    bucket, key = split_s3(str(uri))
    client = s3_client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    # (*.etag files are localize()'s download stamps, not content)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file() and p.suffix != ".etag")
    for f in files:
        name = key if local.is_file() else f"{key.rstrip('/')}/{f.relative_to(local).as_posix()}"
        client.fput_object(bucket, name, str(f))
    return str(uri)


@contextlib.contextmanager
def output_dir(uri: str | os.PathLike) -> Iterator[Path]:
    """A local folder for a stage's outputs at ``uri``.

    A local path is used as it is. For ``s3://`` the block works in a local staging folder,
    seeded with whatever the prefix already holds (so a resumable stage continues from its
    log), and the folder is published back when the block ends, also when it fails, so
    finished work is never lost.
    """
    if not is_s3(uri):
        path = Path(uri)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    bucket, key = split_s3(str(uri))
    try:
        local = localize(uri)
    except NoSuchPrefix:
        # nothing under the prefix (new, or deleted on purpose): start from an empty folder, never
        # from what an older run left in the local cache
        local = _s3_cache_root() / bucket / key.rstrip("/")
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True, exist_ok=True)
    try:
        yield local
    finally:
        if local.is_dir() and any(local.iterdir()):
            publish(local, uri)


@contextlib.contextmanager
def output_dir_for_rank(uri: str | os.PathLike, rank: int) -> Iterator[Path]:
    """:func:`output_dir` for rank 0 of a data-parallel job; for the other ranks the same
    folder read-only (they read checkpoints to resume, rank 0 alone writes and publishes)."""
    if rank == 0 or not is_s3(uri):
        with output_dir(uri) as local:
            yield local
        return
    try:
        yield localize(uri)
    except NoSuchPrefix:
        yield Path(tempfile.mkdtemp(prefix="kadet-rank-"))


@contextlib.contextmanager
def work_dir_lock(work_dir: str | os.PathLike, what: str = "kadet") -> Iterator[None]:
    """Hold ``<work_dir>/.kadet.lock`` for the block: one kadet process per work dir.

    The lock is an ``flock`` on the file, so a crashed process never leaves it taken. A second
    process gets a KadetError naming the holder (pid, command, start time). The file also keeps the
    holder's process key (kadet/core/lifeline.py): a process that takes the lock after a holder was
    killed first ends the tasks that holder left running (they would write into the same work dir).
    """
    import fcntl
    import time

    from kadet.core import lifeline

    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".kadet.lock"
    fh = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.readline().strip() or "another process"
            raise KadetError(f"work dir {folder} is in use by {holder}; wait for it to finish or pass "
                             "another --work-dir") from None
        fh.seek(0)
        before = fh.read().splitlines()
        for line in before[1:]:
            if line.startswith("key ") and (key := line[4:].strip()) != lifeline.process_key():
                lifeline.end_left_processes(key)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} ({what}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n"
                 f"key {lifeline.process_key()}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the flock
