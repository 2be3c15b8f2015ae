"""``kadet models stage``: a model from a packaged name, a folder or s3:// onto a folder (the
model-cache volume) or into a bucket, against a real S3 server (``rclone serve s3``)."""

from __future__ import annotations

import pytest

from kadet.cli import main
from tests.doubles.s3server import rclone_s3, s3_env


@pytest.fixture
def s3(tmp_path, monkeypatch):
    with rclone_s3(tmp_path / "s3") as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("KADET_S3_CACHE", str(tmp_path / "s3-cache"))
        yield tmp_path / "s3"


def test_stage_a_packaged_model_through_the_bucket_onto_the_volume(s3, tmp_path, capsys):
    """The admin's two steps for a model: into the bucket from their machine, then (as the Job
    from ``kadet models job`` does in-cluster) from the bucket onto the model-cache volume. The
    copy on the volume holds the same files (fingerprint) and encodes exactly as the packaged
    model; staging again is a no-op; something else at the destination is refused."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from kadet.kit.models import model_fingerprint, resolve_model_path

    packaged = resolve_model_path("all-MiniLM-L6-v2")
    assert main(["models", "stage", "all-MiniLM-L6-v2", "s3://kadet/models/minilm"]) == 0
    out = capsys.readouterr().out
    assert f"-> s3://kadet/models/minilm" in out and f"fingerprint {model_fingerprint(packaged)}" in out
    assert (s3 / "kadet" / "models" / "minilm" / "config.json").is_file()          # really in the bucket
    volume = tmp_path / "volume" / "models" / "minilm"
    assert main(["models", "stage", "s3://kadet/models/minilm", str(volume)]) == 0
    assert "kadet models: staged" in capsys.readouterr().out
    assert model_fingerprint(volume) == model_fingerprint(packaged) and not list(volume.rglob("*.etag"))
    text = ["does aspirin lower the risk of a heart attack"]
    assert np.allclose(SentenceTransformer(str(volume), device="cpu").encode(text),
                       SentenceTransformer(str(packaged), device="cpu").encode(text), atol=1e-6)
    for dest in (str(volume), "s3://kadet/models/minilm"):
        assert main(["models", "stage", "all-MiniLM-L6-v2", dest]) == 0
        assert "already staged" in capsys.readouterr().out
    assert main(["models", "stage", "smollm2", str(volume)]) == 2
    assert "exists and holds something else" in capsys.readouterr().err
    assert main(["models", "stage", "smollm2", "s3://kadet/models/minilm"]) == 2
    assert "already holds other files" in capsys.readouterr().err


def test_stage_a_gguf_and_refuse_what_is_not_a_model(tmp_path, capsys):
    from kadet.kit.models import smollm2_gguf

    dest = tmp_path / "volume" / "models" / "smollm2"
    assert main(["models", "stage", "smollm2", str(dest)]) == 0
    gguf = dest / smollm2_gguf().name
    assert f"-> {gguf} " in capsys.readouterr().out                            # the value label.llm_model takes
    assert gguf.stat().st_size == smollm2_gguf().stat().st_size and not list(dest.parent.glob(".*partial*"))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("not a model")
    for src, message in ((str(notes), "not a model: expected a folder with config.json"),
                         (str(tmp_path / "missing"), "no such folder and not a packaged model")):
        assert main(["models", "stage", src, str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
