"""kadet data get: download a public BEIR dataset, verify its checksums, never leave half a folder."""

from __future__ import annotations

import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from kadet.cli import main
from kadet.tools.datasets import DATASETS, sha256_of


def _zip(src: Path, tamper: str | None = None) -> bytes:
    """A BEIR-style archive (``scifact/<files>``) of ``src``; ``tamper``: one file with a byte changed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in DATASETS["scifact"].sha256:
            data = (src / rel).read_bytes()
            if rel == tamper:
                data = data[:-2] + b"X" + data[-1:]
            zf.writestr(f"scifact/{rel}", data)
    return buf.getvalue()


@pytest.fixture
def server(scifact):
    """A local HTTP server: /scifact.zip (the real files), /tampered.zip, anything else 404."""
    files = {"/scifact.zip": _zip(scifact), "/tampered.zip": _zip(scifact, tamper="qrels/test.tsv")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_checksum_table_matches_the_shared_copy(scifact):
    for rel, digest in DATASETS["scifact"].sha256.items():
        assert sha256_of(scifact / rel) == digest, rel


def test_get_downloads_unzips_and_verifies(server, tmp_path, capsys):
    dest = tmp_path / "data" / "scifact"
    assert main(["data", "get", "scifact", str(dest), "--url", f"{server}/scifact.zip"]) == 0
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == \
        ["corpus.jsonl", "qrels/test.tsv", "qrels/train.tsv", "queries.jsonl"]
    assert str(dest) in capsys.readouterr().out
    assert [p.name for p in dest.parent.iterdir()] == ["scifact"]  # no temporary folder left
    # a second get into the same folder refuses, and leaves it as it is
    assert main(["data", "get", "scifact", str(dest), "--url", f"{server}/scifact.zip"]) == 2
    assert "already exists" in capsys.readouterr().err and (dest / "corpus.jsonl").exists()


def test_tampered_archive_is_refused_and_leaves_nothing(server, tmp_path, capsys):
    dest = tmp_path / "scifact"
    assert main(["data", "get", "scifact", str(dest), "--url", f"{server}/tampered.zip"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "checksum mismatch for qrels/test.tsv" in err and DATASETS["scifact"].sha256["qrels/test.tsv"] in err
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_http_error_and_offline_are_one_line(server, tmp_path, capsys):
    dest = tmp_path / "scifact"
    assert main(["data", "get", "scifact", str(dest), "--url", f"{server}/missing.zip"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "HTTP 404" in err and "missing.zip" in err
    assert main(["data", "get", "scifact", str(dest), "--url", "http://127.0.0.1:9/scifact.zip"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "could not download" in err and "offline?" in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset_names_the_known_ones(tmp_path, capsys):
    assert main(["data", "get", "nosuch", str(tmp_path / "x")]) == 2
    assert "known: scifact" in capsys.readouterr().err
