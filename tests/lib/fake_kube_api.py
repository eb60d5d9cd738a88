"""A minimal Kubernetes API server for tests: HTTPS with a self-signed certificate, bearer-token
auth, GET /api/v1/namespaces/<ns>/pods/<name> from an in-memory dict. Loopback only."""
import contextlib
import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POD_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/?]+)$")


class FakeKubeApi:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="netsteer-kube-")
        self.cert = os.path.join(self.dir, "ca.crt")
        self.key = os.path.join(self.dir, "tls.key")
        self.token_file = os.path.join(self.dir, "token")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", self.key,
                        "-out", self.cert], check=True, capture_output=True)
        self.set_token("token-1")
        self.pods = {}        # "ns/name" -> labels
        self.requests = []    # (path, authorization header)
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")  # stop() must really take the API away
                self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                api.requests.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self.reply(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
                m = POD_PATH.match(self.path)
                key = m and f"{m.group(1)}/{m.group(2)}"
                if not m or key not in api.pods:
                    return self.reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                ns, name = key.split("/")
                return self.reply(200, {"kind": "Pod", "apiVersion": "v1",
                                        "metadata": {"name": name, "namespace": ns, "labels": api.pods[key]}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set_token(self, token, server_too=True):
        """Rotate the token file (as kubelet does for projected tokens); the server accepts it."""
        with open(self.token_file, "w") as f:
            f.write(token + "\n")
        if server_too:
            self.token = token

    def agent_args(self):
        return ["--kube-api", self.url, "--kube-token-file", self.token_file, "--kube-ca-file", self.cert,
                "--kube-timeout-ms", "1000"]

    def stop(self):
        """The API goes away (connections refused); files stay."""
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def fake_kube_api():
    api = FakeKubeApi()
    try:
        yield api
    finally:
        api.close()
