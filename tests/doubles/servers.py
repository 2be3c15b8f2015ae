"""Test servers: the real llama.cpp OpenAI-compatible server, and a FAKE one for fault injection.

The fake (:class:`FaultServer`) exists only to inject failures the real server never shows on
demand: 5xx replies, hangs past the client timeout, malformed JSON. Everything else is tested
against the real llama.cpp server.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:
        return False
    return True


@contextmanager
def llama_server(gguf: str, n_ctx: int = 2048, n_threads: int | None = None):
    """``python -m llama_cpp.server`` on 127.0.0.1; yields its base URL."""
    port = free_port()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", str(n_ctx), "--verbose", "false"]
    if n_threads:
        cmd += ["--n_threads", str(n_threads)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, lambda: urllib.request.urlopen(url + "/v1/models", timeout=1).read() is not None,
                         "llama.cpp server", 120, lambda: proc.stderr.read().decode()[-2000:])
        yield url
    finally:
        stop(proc)


def wait_until_ready(proc: subprocess.Popen, probe, what: str, timeout: float, detail=lambda: "") -> None:
    """Poll ``probe()`` until it returns true; fail if ``proc`` exits or ``timeout`` passes."""
    deadline = time.time() + timeout
    while True:
        try:
            if probe():
                return
        except Exception:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {detail()}")
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not start in {timeout:.0f} s: {detail()}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


class FaultServer:
    """FAKE OpenAI-compatible chat server for fault injection.

    Each distinct request body walks through ``script`` on its successive attempts, e.g.
    ``["503", "hang", "badjson", "ok"]``; past the end it answers ``ok``. ``ok`` replies a
    one-line query derived from the request. It records every Authorization header it saw.
    """

    def __init__(self, script: list[str], hang_s: float = 3.0):
        self.script = script
        self.hang_s = hang_s
        self.attempts: Counter[str] = Counter()
        self.auth: set[str] = set()
        self.paths: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = hashlib.sha1(body).hexdigest()
                with server.lock:
                    n = server.attempts[key]
                    server.attempts[key] += 1
                    server.auth.add(self.headers.get("Authorization", ""))
                    server.paths[self.path] += 1
                action = server.script[n] if n < len(server.script) else "ok"
                if action == "hang":
                    time.sleep(server.hang_s)
                    action = "ok"
                if action.isdigit():
                    self._send(int(action), b'{"error": "injected"}')
                elif action == "badjson":
                    self._send(200, b'{"choices": [{"message": {"content": "trunc')
                else:
                    req = json.loads(body)
                    last = req["messages"][-1]["content"] if "messages" in req else req["inputs"].split("Passage:")[-1]
                    words = [w.strip(".,:;") for w in last.split()[1:6]]
                    text = "what about " + " ".join(words).lower() + " " + key[:6]
                    if "inputs" in req:  # TGI's raw text-generation route
                        self._send(200, json.dumps([{"generated_text": text}]).encode())
                        return
                    reply = {"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                    self._send(200, json.dumps(reply).encode())

            def _send(self, code: int, payload: bytes):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
