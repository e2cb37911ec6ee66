"""End-to-end fixtures: daphne servers on the test database, SSE clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.server import DaphneServer

pytestmark = pytest.mark.e2e


#: Servers kept running at once: each holds database connections (its request threads,
#: its database pool, its background loops), and a whole run's worth of them left
#: running exhausts PostgreSQL's max_connections (100 by default).
MAX_LIVE_SERVERS = 4


@pytest.fixture(scope="session")
def daphne_factory(django_db_setup, django_db_blocker) -> Iterator[Callable[..., DaphneServer]]:
    """Start (once per distinct environment) a daphne server on the test database; the
    least recently asked-for ones stop past :data:`MAX_LIVE_SERVERS` (they start again
    when asked for)."""
    servers: dict[tuple, DaphneServer] = {}

    def start(**env: str) -> DaphneServer:
        key = tuple(sorted(env.items()))
        server = servers.pop(key, None)
        if server is None or server.process is None or server.process.poll() is not None:
            live = [k for k, s in servers.items() if s.process and s.process.poll() is None]
            for old in live[: max(0, len(live) - MAX_LIVE_SERVERS + 1)]:
                servers[old].stop()
            with django_db_blocker.unblock():
                server = DaphneServer(env).start()
        servers[key] = server  # the most recently asked-for last
        return server

    def stop_all() -> None:
        """Stop every server started so far (they start again when asked for): for tests
        whose outcome any running server could change, such as webhook deliveries, which
        every server process sends."""
        for server in servers.values():
            server.stop()

    def stop_where(predicate: Callable[[dict[str, str]], bool]) -> None:
        """Stop the servers whose environment matches ``predicate``."""
        for key, server in servers.items():
            if predicate(dict(key)):
                server.stop()

    start.stop_all = stop_all  # type: ignore[attr-defined]
    start.stop_where = stop_where  # type: ignore[attr-defined]
    yield start
    stop_all()


@pytest.fixture
def daphne(daphne_factory, transactional_db) -> DaphneServer:
    """The default server: mock provider typing at 2 ms a token."""
    return daphne_factory(MOCK_TOKEN_DELAY_MS="2")
