"""Public BEIR datasets: fetch one (``kadet data get NAME DIR``) with checksums, check a ``--data`` path,
and find the shared local copy (:func:`find_shared_data`, :func:`find_scifact`).

    kadet data get scifact data/scifact          # download, unzip, verify sha256, then move into place

The archive is extracted to a temporary folder beside ``DIR`` and every expected file's sha256 is
checked against :data:`DATASETS` before the folder is renamed to ``DIR``: a failed or tampered
download leaves nothing behind. Standard library only (``urllib``, ``zipfile``, ``hashlib``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kadet.core.errors import KadetError
from kadet.core.storage import is_s3

#: Where BEIR's archives live (``<BEIR_URL>/<name>.zip``).
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
#: Seconds to wait for the server (connect, and between reads).
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BeirDataset:
    """One public BEIR dataset: its archive URL and the sha256 of each file it must hold
    (paths relative to the dataset folder, ``/``-separated)."""

    name: str
    url: str
    sha256: dict[str, str]


#: The datasets ``kadet data get`` knows. The digests were computed (sha256sum) from the copy of
#: the same public BEIR release kept in ``../shared/data/beir/scifact`` (2025-12-01 snapshot of
#: ``scifact.zip``), the folder the README's main job and the tests use.
DATASETS: dict[str, BeirDataset] = {
    "scifact": BeirDataset("scifact", f"{BEIR_URL}/scifact.zip", {
        "corpus.jsonl": "f0d32db0d156b526d75921ed7a76f2cb912902631c87248c5c97c617bad0b60c",
        "queries.jsonl": "7ce12b81fc629fd3e526bcf84869698d175b610349c77ed61bdc18cf8dc766e5",
        "qrels/test.tsv": "68c0ac63f1c24b9e8ce497649694f09b2d0850bab7ec2b103cc66996f5f8b3a3",
        "qrels/train.tsv": "c10cf828fd86e1a51f79e33e8ffe6aedc198a753f2d6be2d5a31c18a0086472b",
    }),
}


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, timeout: float = TIMEOUT_S) -> None:
    """``url`` to the file ``dest``; a :class:`KadetError` in one line when it cannot."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as fh:
            shutil.copyfileobj(resp, fh, 1 << 20)
    except urllib.error.HTTPError as exc:
        raise KadetError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:  # no DNS, refused, timed out, reset
        reason = getattr(exc, "reason", exc)
        raise KadetError(f"could not download {url}: {reason} (offline? pass --url with a reachable copy of "
                         "the zip, or copy the dataset folder by hand)") from None


def _dataset_root(folder: Path, expected: dict[str, str]) -> Path:
    """The folder inside an extracted archive that holds the dataset (BEIR zips hold ``<name>/``)."""
    first = next(iter(expected))
    if (folder / first).exists():
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("__MACOSX")]
    if len(subdirs) == 1 and (subdirs[0] / first).exists():
        return subdirs[0]
    return folder


def verify(folder: Path, expected: dict[str, str], source: str) -> None:
    """Every file of ``expected`` is in ``folder`` with its sha256; else a KadetError naming the file."""
    for rel, digest in expected.items():
        path = folder / rel
        if not path.is_file():
            raise KadetError(f"{source}: {rel} is missing from the archive")
        got = sha256_of(path)
        if got != digest:
            raise KadetError(f"{source}: checksum mismatch for {rel}: expected sha256 {digest}, got {got}")


def get_dataset(name: str, dest: str | os.PathLike, url: str | None = None, timeout: float = TIMEOUT_S) -> Path:
    """Download dataset ``name`` (from ``url``, default its BEIR archive), unzip, verify and move it
    to ``dest``; returns ``dest``. ``dest`` must not exist (or be an empty folder)."""
    if name not in DATASETS:
        raise KadetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    ds = DATASETS[name]
    url = url or ds.url
    dest = Path(dest)
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise KadetError(f"{dest} already exists and is not an empty folder; remove it or choose another DIR")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        archive = tmp / "archive.zip"
        download(url, archive, timeout)
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp / "x")  # extract() strips absolute paths and '..'
        except zipfile.BadZipFile as exc:
            raise KadetError(f"{url}: not a zip archive ({exc})") from None
        root = _dataset_root(tmp / "x", ds.sha256)
        verify(root, ds.sha256, url)
        if dest.is_dir():
            dest.rmdir()  # the empty folder it replaces
        os.replace(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def check_data(data: str | os.PathLike, flag: str = "--data") -> None:
    """Fail fast, in one line, when a local ``--data`` cannot be a corpus: it must be a corpus file
    or a folder holding ``corpus.jsonl`` or ``corpus.parquet``. ``s3://`` URIs are left to the stages."""
    text = str(data)
    if is_s3(text) or "://" in text:
        return
    path = Path(text)
    if not path.exists():
        raise KadetError(f"{flag} {text}: no such file or folder (expected a BEIR folder with corpus.jsonl or "
                         "corpus.parquet, or a corpus file)")
    if path.is_dir() and not any((path / n).is_file() for n in ("corpus.jsonl", "corpus.parquet")):
        raise KadetError(f"{flag} {text}: the folder has no corpus.jsonl or corpus.parquet")


#: The source checkout kadet runs from (``kadet/tools/datasets.py`` -> the folder holding ``kadet/``):
#: the shared data is looked for beside it.
CHECKOUT = Path(__file__).resolve().parents[2]


def find_shared_data() -> Path | None:
    """The local copy of the public datasets (``shared/data``, holding ``beir/<name>/``) that the
    README's main job, the tests and the benchmarks read: ``$KADET_SHARED_DATA``, else the first
    ``shared/data`` with a ``beir`` folder beside the checkout or beside one of its parents, else
    /work/shared/data; None when there is none.

    Here, not in tests/ or benchmarks/, so that both find the data the same way without importing
    each other (``kadet data get`` is how such a copy is made)."""
    env = os.environ.get("KADET_SHARED_DATA")
    if env:
        return Path(env)
    for parent in [CHECKOUT, *CHECKOUT.parents]:
        cand = parent.parent / "shared" / "data" if parent == CHECKOUT else parent / "shared" / "data"
        if (cand / "beir").is_dir():
            return cand
    fallback = Path("/work/shared/data")
    return fallback if fallback.is_dir() else None


def find_scifact() -> Path:
    """The shared copy of BEIR SciFact (:func:`find_shared_data`); FileNotFoundError when absent."""
    root = find_shared_data()
    if root is None or not (root / "beir" / "scifact" / "corpus.jsonl").exists():
        raise FileNotFoundError("BEIR SciFact not found: set KADET_SHARED_DATA to the shared/data folder")
    return root / "beir" / "scifact"
