"""A local HTTP double of the Kubeflow Pipelines v2beta1 REST API: records every request and
answers with the minimal JSON a real server returns. It checks request *shape* only; no KFP
server can run here (no Kubernetes), so nothing is executed.

Namespaces as KFP models them: a pipeline uploaded with ``namespace`` belongs to that (profile)
namespace, one without to the shared ones; listing pipelines or experiments returns those of the
``namespace`` asked for (none: the shared ones); a pipeline name is unique per namespace (KFP's
database keys pipelines by namespace and name), so a second upload of the same name answers
409 ALREADY_EXISTS."""

from __future__ import annotations

import json
import threading
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _query(path: str) -> dict[str, str]:
    from urllib.parse import parse_qs, urlsplit

    return {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}


def _name_filter(path: str) -> str | None:
    """The display name a ``filter`` query parameter asks for (EQUALS predicate), if any."""
    raw = _query(path).get("filter")
    if not raw:
        return None
    preds = json.loads(raw).get("predicates", [])
    return next((p.get("string_value", p.get("stringValue")) for p in preds if p.get("key") == "display_name"), None)


class KfpDouble:
    def __init__(self, version: str = "2.17.3", token: str | None = None):
        self.version = version
        #: With a token, every request without ``Authorization: Bearer <token>`` gets 401 (as the
        #: KFP API behind oauth2-proxy / Istio answers an unauthenticated call).
        self.token = token
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}

    def _upload_version(self, pid: str, name: str, description: str = "") -> dict:
        v = {"pipeline_id": pid, "pipeline_version_id": str(uuid.uuid4()), "display_name": name,
             "description": description}
        self.versions[v["pipeline_version_id"]] = v
        return v

    def _create_pipeline(self, name: str, namespace: str, description: str = "") -> tuple[int, dict]:
        p = {"pipeline_id": str(uuid.uuid4()), "display_name": name, "namespace": namespace, "description": description}
        if any((o["display_name"], o["namespace"]) == (name, namespace) for o in self.pipelines.values()):
            return 409, {"error": f"Failed to create a pipeline: pipeline {name!r} already exists in "
                                  f"namespace {namespace!r}", "code": 6}
        self.pipelines[p["pipeline_id"]] = p
        return 200, p

    def answer(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        route = path.split("?")[0]
        q = _query(path)
        if route.endswith("/healthz"):
            return 200, {"commit_sha": "double", "tag_name": self.version, "multi_user": False}
        if route == "/apis/v2beta1/pipelines" and method == "GET":
            name, ns = _name_filter(path), q.get("namespace", "")
            found = [p for p in self.pipelines.values() if (name is None or p["display_name"] == name)
                     and p["namespace"] == ns]
            return 200, {"pipelines": found, "total_size": len(found)}
        if route == "/apis/v2beta1/pipelines/upload" and method == "POST":   # like KFP: a first version too
            status, p = self._create_pipeline(q.get("name", ""), q.get("namespace", ""), q.get("description", ""))
            if status == 200:
                self._upload_version(p["pipeline_id"], p["display_name"])   # named after the pipeline, as KFP does
            return status, p
        if route == "/apis/v2beta1/pipelines" and method == "POST":          # CreatePipeline: no version
            return self._create_pipeline(body.get("display_name", ""), body.get("namespace", ""),
                                         body.get("description", ""))
        if route == "/apis/v2beta1/pipelines/upload_version" and method == "POST":
            if q.get("pipelineid") not in self.pipelines:
                return 404, {"error": "no such pipeline"}
            return 200, self._upload_version(q["pipelineid"], q.get("name", ""), q.get("description", ""))
        if route.startswith("/apis/v2beta1/pipelines/") and route.endswith("/versions") and method == "GET":
            pid, name = route.split("/")[4], _name_filter(path)
            found = [v for v in self.versions.values() if v["pipeline_id"] == pid
                     and (name is None or v["display_name"] == name)]
            return 200, {"pipeline_versions": found, "total_size": len(found)}
        if route == "/apis/v2beta1/recurringruns" and method == "GET":
            found = [j for j in self.recurring.values()
                     if not q.get("experiment_id") or j["experiment_id"] == q["experiment_id"]]
            return 200, {"recurringRuns": found, "total_size": len(found)}   # sic: the API's own spelling
        if route.startswith("/apis/v2beta1/recurringruns/") and method == "DELETE":
            if self.recurring.pop(route.rsplit("/", 1)[1], None) is None:
                return 404, {"error": "no such recurring run", "code": 5}
            return 200, {}
        if route.startswith("/apis/v2beta1/recurringruns/") and method == "POST":   # {id}:enable, {id}:disable
            rid, _, verb = route.rsplit("/", 1)[1].partition(":")
            if rid not in self.recurring or verb not in ("enable", "disable"):
                return 404, {"error": f"no such recurring run or action {route}", "code": 5}
            self.recurring[rid].update({"enable": {"status": "ENABLED", "mode": "ENABLE"},
                                        "disable": {"status": "DISABLED", "mode": "DISABLE"}}[verb])
            return 200, {}
        if route == "/apis/v2beta1/experiments" and method == "POST":
            exp = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
                   "namespace": body.get("namespace", "")}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if route == "/apis/v2beta1/experiments" and method == "GET":
            name, ns = _name_filter(path), q.get("namespace", "")
            found = [e for e in self.experiments.values() if (name is None or e["display_name"] == name)
                     and e["namespace"] == ns]
            return 200, {"experiments": found, "total_size": len(found)}
        if route.startswith("/apis/v2beta1/experiments/") and method == "GET":
            return 200, self.experiments.get(route.rsplit("/", 1)[1], {})
        if route == "/apis/v2beta1/runs" and method == "POST":
            return 200, {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
        if route == "/apis/v2beta1/recurringruns" and method == "POST":
            job = {**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
            self.recurring[job["recurring_run_id"]] = job
            return 200, job
        return 404, {"error": f"the double does not serve {method} {route}"}


@contextmanager
def kfp_double(version: str = "2.17.3", token: str | None = None):
    """Serve a :class:`KfpDouble` (a backend of ``version``) on 127.0.0.1; yields ``(host, double)``."""
    double = KfpDouble(version, token)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            multipart = "multipart/form-data" in (self.headers.get("Content-Type") or "")
            body = {"upload": raw.decode("utf-8", "replace")} if multipart else (json.loads(raw) if raw else None)
            double.requests.append({"method": self.command, "path": self.path, "body": body,
                                    "headers": dict(self.headers)})
            if double.token and self.headers.get("Authorization") != f"Bearer {double.token}":
                status, payload = 401, {"error": "Unauthorized", "code": 16}
            else:
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
