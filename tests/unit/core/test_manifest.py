"""Stage manifests and content fingerprints."""

from __future__ import annotations

from kadet.core.manifest import Manifest, digest


def test_fingerprint_file_and_dir(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("one")
    f1 = digest(tmp_path / "d" / "a.txt")
    d1 = digest(tmp_path / "d")
    assert f1.startswith("sha256:") and f1 != d1
    (tmp_path / "d" / "a.txt").write_text("two")
    assert digest(tmp_path / "d") != d1


def test_manifest_round_trip(tmp_path):
    (tmp_path / "in.jsonl").write_text("{}\n")
    m = Manifest(stage="prepare", config_hash="abc")
    m.add_input("corpus", tmp_path / "in.jsonl")
    m.drop("too_short")
    m.drop("too_short", 2)
    m.drop("duplicate")
    m.counts["passages"] = 10
    m.write(tmp_path / "out")
    back = Manifest.read(tmp_path / "out")
    assert back.dropped == {"too_short": 3, "duplicate": 1}
    assert back.inputs["corpus"]["fingerprint"] == digest(tmp_path / "in.jsonl")
    assert back.stage == "prepare" and back.counts == {"passages": 10}
