"""The fingerprint stage: what a corpus holds, and what changed since the version a run builds on.

(Its two fingerprints are the *corpus fingerprint* and the *inputs fingerprint*; a stage's
input digests are :func:`kadet.core.manifest.digest`, a model folder's ``model_fingerprint``
and an encoder route's ``route_fingerprint`` are in ``kadet.kit``.)

A scheduled run must retrain when the corpus *content* changed and do nothing new when it did
not, whatever its address. Three digests decide it:

* :func:`corpus_fingerprint`: cheap, from what the corpus location holds: on S3 the object
  names, sizes and ETags of a listing (nothing downloaded); locally the names, sizes and a
  SHA-256 of each file's bytes (linear in the corpus, ~0.1 s per 100 MB here);
* :func:`inputs_fingerprint`: the corpus fingerprint plus every setting that shapes the model
  (not where things are stored, not shard counts, not the gate's thresholds): a registry
  version tagged with the same value (``kadet.inputs_fingerprint``) was trained on exactly these
  inputs, so the run has nothing new to do;
* :func:`document_digests`: one short digest per document text, kept in the work dir's store
  (``store/corpus/<fingerprint>.json``) so a later version can say what changed since it
  (:func:`changes`).

    fp = corpus_fingerprint("s3://kadet/corpora/docs")     # {"digest": ..., "files": 3, "bytes": ...}
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from kadet.core.io import read_json
from kadet.core.errors import KadetError

#: Settings that do not change the model a run trains: where things live, how the work is split,
#: how it is shown, and the gate (which judges the model, not makes it).
NOT_MODEL_SETTINGS = ("work_dir", "artifact_uri", "data.data_dir", "data.qrels", "tracking", "register", "retention",
                      "generate.tgi", "distill.chunk_size",
                      "generate.shard_index", "generate.num_shards", "generate.progress", "generate.flush_every",
                      "generate.device", "generate.batch_size", "label.shard_index", "label.num_shards",
                      "label.flush_every", "label.device", "label.batch_size", "retrieval.device",
                      "retrieval.batch_size", "retrieval.embedding_cache", "distill.progress", "distill.device",
                      "distill.preflight", "distill.min_teacher_lead")
#: Version tags of the lineage (register sets them, the report and the card show them).
INPUTS_TAG = "kadet.inputs_fingerprint"
CORPUS_TAG = "kadet.corpus_fingerprint"
DOCUMENTS_TAG = "kadet.documents"
PARENT_TAG = "kadet.parent_version"
CHANGES_TAG = "kadet.changes_since_parent"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _local_entries(root: Path) -> list[tuple[str, int, str]]:
    if root.is_file():
        return [(root.name, root.stat().st_size, _sha256_file(root))]
    if not root.is_dir():
        raise KadetError(f"{root}: no such corpus file or folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                          p.relative_to(root).parts))
    return [(p.relative_to(root).as_posix(), p.stat().st_size, _sha256_file(p)) for p in files]


def _s3_entries(uri: str) -> list[tuple[str, int, str]]:
    from kadet.core.storage import NoSuchPrefix, s3_client, split_s3

    bucket, key = split_s3(uri)
    prefix = key.rstrip("/")
    objects = [o for o in s3_client().list_objects(bucket, prefix=prefix, recursive=True)
               if not o.is_dir and (o.object_name == prefix or o.object_name.startswith(prefix + "/"))]
    if not objects:
        raise NoSuchPrefix(f"{uri}: no such object or prefix")
    return sorted((o.object_name[len(prefix):].lstrip("/") or Path(prefix).name, int(o.size), str(o.etag).strip('"'))
                  for o in objects)


def corpus_fingerprint(uri: str | os.PathLike, *more: str | os.PathLike) -> dict:
    """The *corpus fingerprint*: ``{"digest", "files", "bytes"}`` of what ``uri`` (and ``more``,
    e.g. a qrels file kept elsewhere) holds: the same content gives the same digest at another local path, or at another
    S3 prefix uploaded the same way. A local copy and an S3 copy differ (SHA-256 vs ETag), as do
    two S3 uploads with other multipart part sizes: those count as a change (a retrain), never
    the other way round."""
    entries = []
    for i, u in enumerate([uri, *[m for m in more if m]]):
        listed = _s3_entries(str(u)) if str(u).startswith("s3://") else _local_entries(Path(u))
        entries += [(f"{i}/{name}", size, tag) for name, size, tag in listed]
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:20]
    return {"digest": digest, "files": len(entries), "bytes": sum(size for _, size, _ in entries)}


def _drop(tree: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest and isinstance(tree.get(head), dict):
        _drop(tree[head], rest)
    elif not rest:
        tree.pop(head, None)


def inputs_fingerprint(cfg, corpus_digest: str) -> str:
    """The *inputs fingerprint* (tag :data:`INPUTS_TAG`): the corpus fingerprint's digest and every
    setting that shapes the trained model (:data:`NOT_MODEL_SETTINGS` left out)."""
    settings = cfg.to_dict()
    for dotted in NOT_MODEL_SETTINGS:
        _drop(settings, dotted)
    blob = json.dumps({"corpus": corpus_digest, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def document_digests(corpus: Mapping, separator: str = " ") -> dict[str, str]:
    """``{doc id: digest of its title and text}`` (12 hex characters: collisions need ~10^7 documents)."""
    return {d: hashlib.sha1(doc.full_text(separator).encode()).hexdigest()[:12] for d, doc in corpus.items()}


def digests_path(work_dir: str | os.PathLike, corpus_digest: str) -> Path:
    return Path(work_dir) / "store" / "corpus" / f"{corpus_digest}.json"


def keep_digests(work_dir: str | os.PathLike, corpus_digest: str, digests: Mapping[str, str]) -> Path:
    """Keep a corpus's document digests in the work dir's store (written once per content)."""
    from kadet.core.io import write_json

    path = digests_path(work_dir, corpus_digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, dict(digests), indent=0)
    return path


def changes(old: Mapping[str, str] | None, new: Mapping[str, str]) -> dict[str, int] | None:
    """Documents ``added``, ``changed``, ``removed`` and ``unchanged`` from ``old`` to ``new``
    (None when the old digests are unknown)."""
    if old is None:
        return None
    same = sum(1 for d, h in new.items() if old.get(d) == h)
    changed = sum(1 for d, h in new.items() if d in old and old[d] != h)
    return {"added": sum(1 for d in new if d not in old), "changed": changed,
            "removed": sum(1 for d in old if d not in new), "unchanged": same}


def changes_text(c: Mapping[str, int] | None) -> str:
    if c is None:
        return "unknown (the parent's document list is not in this work dir)"
    return f"+{c['added']} added, {c['changed']} changed, -{c['removed']} removed, {c['unchanged']} unchanged"


def read_digests(work_dir: str | os.PathLike, corpus_digest: str) -> dict[str, str] | None:
    path = digests_path(work_dir, corpus_digest)
    return read_json(path) if corpus_digest and path.exists() else None
