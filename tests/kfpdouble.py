"""A local HTTP double of the Kubeflow Pipelines v2beta1 REST API: records every request and
answers with the minimal JSON a real server returns. It checks request *shape* only; no KFP
server can run here (no Kubernetes), so nothing is executed."""

from __future__ import annotations

import json
import threading
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class KfpDouble:
    def __init__(self):
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}

    def answer(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        route = path.split("?")[0]
        if route.endswith("/healthz"):
            return 200, {"commit_sha": "double", "tag_name": "2.17.3", "multi_user": False}
        if route == "/apis/v2beta1/experiments" and method == "POST":
            exp = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
                   "namespace": body.get("namespace", "")}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if route == "/apis/v2beta1/experiments" and method == "GET":
            return 200, {"experiments": list(self.experiments.values()), "total_size": len(self.experiments)}
        if route.startswith("/apis/v2beta1/experiments/") and method == "GET":
            return 200, self.experiments.get(route.rsplit("/", 1)[1], {})
        if route == "/apis/v2beta1/runs" and method == "POST":
            return 200, {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
        if route == "/apis/v2beta1/recurringruns" and method == "POST":
            return 200, {**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
        return 404, {"error": f"the double does not serve {method} {route}"}


@contextmanager
def kfp_double():
    """Serve a :class:`KfpDouble` on 127.0.0.1; yields ``(host, double)``."""
    double = KfpDouble()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            body = json.loads(raw) if raw else None
            double.requests.append({"method": self.command, "path": self.path, "body": body,
                                    "headers": dict(self.headers)})
            status, payload = double.answer(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", double
    finally:
        server.shutdown()
        server.server_close()
