"""A real S3-compatible server on loopback for the tests: moto's server, behind a small proxy that
counts the requests that reach it and injects the faults of a network store (a 500 for a few
requests, a permanent 403 for one key, a wrong access key refused as AWS refuses it)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACCESS_KEY = "cnnfeat-test-key"
SECRET_KEY = "cnnfeat-test-secret"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _s3_error(code: str, message: str) -> bytes:
    xml = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return xml.encode()


class FaultProxy(ThreadingHTTPServer):
    """Forwards every request to the server at `upstream`; counts them; applies the faults set."""

    daemon_threads = True

    def __init__(self, upstream: int):
        super().__init__(("127.0.0.1", free_port()), _Forward)
        self.upstream = upstream
        self.requests: Counter = Counter()  # (method, path without query) -> count
        self.failing: dict[str, list] = {}  # key ending -> [status, times left]
        self.denied: set[str] = set()
        self.latency_s = 0.0  # added before answering each request (a store farther away than loopback)
        self.lock = threading.Lock()

    def fault(self, method: str, path: str):
        """(status, code) to answer instead of forwarding, or None."""
        with self.lock:
            self.requests[(method, path)] += 1
            for ending, rule in self.failing.items():
                if method == "GET" and path.endswith(ending) and rule[1] > 0:
                    rule[1] -= 1
                    return rule[0], "InternalError" if rule[0] >= 500 else "SlowDown"
        if method == "GET" and any(path.endswith(ending) for ending in self.denied):
            return 403, "AccessDenied"
        return None

    def gets(self, ending: str = "") -> int:
        """GET requests for objects (not listings) whose path ends with `ending`."""
        return sum(
            n
            for (method, path), n in self.requests.items()
            if method == "GET" and not path.startswith("LIST") and path.endswith(ending)
        )


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _handle(self):
        server: FaultProxy = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0]
        listing = "list-type=" in self.path or "delimiter=" in self.path or path.rstrip("/").count("/") <= 1
        if f"Credential={ACCESS_KEY}/" not in (self.headers.get("Authorization") or ""):
            return self._answer(403, _s3_error("InvalidAccessKeyId", "The AWS Access Key Id does not exist."))
        if server.latency_s:
            time.sleep(server.latency_s)
        fault = server.fault(self.command, "LIST" + path if listing else path)
        if fault:
            return self._answer(fault[0], _s3_error(fault[1], "injected by the test"))
        upstream = http.client.HTTPConnection("127.0.0.1", server.upstream, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=dict(self.headers))
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            length = answer.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    def _answer(self, status: int, data: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle


class S3Server:
    """moto's S3 server and the proxy in front of it, both on 127.0.0.1; `env`: what a client needs."""

    def __init__(self):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

        self.moto_port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self.moto.start()
        self.proxy = FaultProxy(self.moto_port)
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.proxy.server_address[1]}"

    def env(self, tmp_path) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        }

    def client(self):
        """A boto3 client straight to moto (uploads are set-up, not counted or faulted)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.moto_port}",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def upload_folder(self, folder, bucket: str, prefix: str) -> list[str]:
        """Every file under `folder` to s3://bucket/prefix/<its relative path>; the keys."""
        from pathlib import Path

        client, keys = self.client(), []
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(folder).as_posix()}"
                client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
                keys.append(key)
        return keys

    def stop(self):
        self.proxy.shutdown()
        self.proxy.server_close()
        self.moto.stop()
