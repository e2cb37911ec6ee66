"""End-to-end fixtures: daphne servers on the test database, SSE clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.server import DaphneServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def daphne_factory(django_db_setup, django_db_blocker) -> Iterator[Callable[..., DaphneServer]]:
    """Start (once per distinct environment) a daphne server on the test database."""
    servers: dict[tuple, DaphneServer] = {}

    def start(**env: str) -> DaphneServer:
        key = tuple(sorted(env.items()))
        server = servers.get(key)
        if server is None or server.process is None or server.process.poll() is not None:
            with django_db_blocker.unblock():
                server = DaphneServer(env).start()
            servers[key] = server
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
