"""deploy/nginx.conf's per-client-address limits, run by a real nginx.

nginx runs the production config's chat settings and locations (deploy/chat/, which
scripts/cluster.py's rendering of deploy/nginx.cluster.conf.template includes, as ``make
cluster`` does) in front of a small fake upstream that answers every request at once and
holds event streams open. Clients connect
from other loopback addresses (127.0.0.2, ...: every 127/8 address is this host on Linux),
since the config does not limit 127.0.0.1 itself (health checks, the scraper, benchmarks).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from scripts.cluster import (
    ClusterError,
    find_nginx,
    mime_types_path,
    render_nginx_config,
    wait_http_ok,
)
from tests.e2e.server import free_port

pytestmark = pytest.mark.e2e

#: The limits deploy/chat/ sets (its comments say why).
STREAMS_PER_ADDRESS = 32
API_BURST = 40
LOGIN_BURST = 5


class FakeUpstream(ThreadingHTTPServer):
    """Answers ``{"ok": true}`` to anything; ``.../stream`` gets one SSE event and is held
    open until :attr:`release` is set (or the client goes)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.release = threading.Event()


class _UpstreamHandler(BaseHTTPRequestHandler):
    server: FakeUpstream
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once (no delayed-ACK wait)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.split("?")[0].endswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"event: metadata\ndata: {}\n\n")
            self.wfile.flush()
            self.server.release.wait(30)
            self.close_connection = True
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer


@pytest.fixture(scope="module")
def nginx_url() -> Iterator[str]:
    """A private nginx with the production chat locations in front of :class:`FakeUpstream`."""
    try:
        nginx = find_nginx()
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    upstream = FakeUpstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    prefix = Path(tempfile.mkdtemp(prefix="chat-nginx-limits-"))
    prefix.chmod(0o755)
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / name).mkdir(parents=True)
    port = free_port()
    config = prefix / "nginx.conf"
    config.write_text(
        render_nginx_config(
            prefix=prefix,
            listen=f"127.0.0.1:{port}",
            upstreams=[f"127.0.0.1:{upstream.server_address[1]}"],
            static_root=prefix,
            mime_types=mime_types_path(nginx),
        )
    )
    base = [nginx, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        upstream.release.set()
        process.terminate()
        process.wait(10)
        upstream.shutdown()
        shutil.rmtree(prefix, ignore_errors=True)


def client_from(address: str) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (a loopback address)."""
    return httpx.Client(
        transport=httpx.HTTPTransport(local_address=address),
        timeout=10,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
    )


def assert_throttled(response: httpx.Response, retry_after: str) -> None:
    """nginx's 429 in the application's error shape."""
    assert response.status_code == 429
    assert response.headers["Retry-After"] == retry_after
    assert response.json()["code"] == "throttled"


def test_api_requests_are_limited_per_address(nginx_url: str) -> None:
    with client_from("127.0.0.2") as client:
        statuses = []
        while len(statuses) < 4 * API_BURST and 429 not in statuses:
            statuses.append(client.get(f"{nginx_url}/api/v1/contexts/").status_code)
        limited = client.get(f"{nginx_url}/api/v1/contexts/")
    # The burst is served at once, then the rate (10/s) applies.
    assert statuses[: API_BURST + 1] == [200] * (API_BURST + 1)
    assert statuses[-1] == 429
    assert_throttled(limited, "1")
    # Another address has its own budget; the host itself (127.0.0.1) is not limited.
    with client_from("127.0.0.3") as other:
        assert other.get(f"{nginx_url}/api/v1/contexts/").status_code == 200
    with client_from("127.0.0.1") as local:
        statuses = [local.get(f"{nginx_url}/api/v1/contexts/").status_code for _ in range(60)]
    assert set(statuses) == {200}


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_password_logins_are_limited_per_address(nginx_url: str, path: str) -> None:
    address = "127.0.0.4" if path.startswith("/accounts") else "127.0.0.5"
    with client_from(address) as client:
        statuses = [
            client.post(f"{nginx_url}{path}", data={"username": "x", "password": "y"}).status_code
            for _ in range(LOGIN_BURST + 3)
        ]
        limited = client.post(f"{nginx_url}{path}", data={"username": "x", "password": "y"})
        # Showing the form is not a login attempt: still served.
        form = client.get(f"{nginx_url}{path}")
    assert statuses[: LOGIN_BURST + 1] == [200] * (LOGIN_BURST + 1)
    assert statuses[-1] == 429
    assert_throttled(limited, "6")
    assert form.status_code == 200


def test_open_streams_and_websockets_are_capped_per_address(nginx_url: str) -> None:
    with client_from("127.0.0.6") as client, contextlib.ExitStack() as stack:
        # Each stream's byte iterator is kept: dropping one would close its connection.
        readers = []
        for i in range(STREAMS_PER_ADDRESS):
            path = "/api/v1/conversations/stream" if i % 2 else "/api/v1/messages/m1/stream"
            response = stack.enter_context(client.stream("POST", f"{nginx_url}{path}"))
            assert response.status_code == 200
            readers.append(response.iter_raw())
            # Unbuffered: the first event arrives while the upstream still holds the stream.
            assert next(readers[-1]).startswith(b"event: metadata")
        over = client.post(f"{nginx_url}/api/v1/conversations/stream")
        upgrade = client.get(
            f"{nginx_url}/ws/v1/chat/",
            headers={"Connection": "Upgrade", "Upgrade": "websocket"},
        )
        # Plain API requests are not connection-capped.
        api = client.get(f"{nginx_url}/api/v1/contexts/")
    assert_throttled(over, "1")
    assert_throttled(upgrade, "1")
    assert api.status_code == 200
    # The streams closed (nginx notices within moments): the address may open streams again.
    with client_from("127.0.0.6") as client:
        for _ in range(50):
            with client.stream("POST", f"{nginx_url}/api/ai/chat/stream") as response:
                if response.status_code == 200:
                    break
            time.sleep(0.1)
        assert response.status_code == 200
