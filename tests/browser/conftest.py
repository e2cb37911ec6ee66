"""Browser fixtures: Debian's Chromium driven by Playwright against a real daphne.

Chromium is never downloaded by Playwright here (``playwright install`` does not work in
this environment): the tests launch ``/usr/bin/chromium``, which
``scripts/ensure_chromium.sh`` installs. Without it the tests fail, and say so.

The server is ``daphne chatproject.asgi:application`` on the test database (see
``tests/e2e/server.py``) with ``DJANGO_DEBUG`` off, the hashed static files of a
``collectstatic`` run, and the mock provider typing slowly enough to watch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import factories
from tests.e2e.server import ROOT, DaphneServer

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Slow enough that a reply visibly types itself (and can be stopped or reloaded).
MOCK_TOKEN_DELAY_MS = "40"
BROWSER_ROUTES = "mock:mock-1,mock:mock-2"
PASSWORD = "pw-alice"  # factories.make_user: pw-<username>


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def static_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``collectstatic`` with the manifest storage, as a deployment runs it."""
    root = tmp_path_factory.mktemp("static")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.browser.settings",
        "WEB_TEST_STATIC_ROOT": str(root),
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    return root


@pytest.fixture(scope="session")
def browser_server_factory(
    django_db_setup, django_db_blocker, static_root
) -> Iterator[Callable[[], DaphneServer]]:
    """Start (once) the daphne the browser talks to."""
    servers: list[DaphneServer] = []

    def start() -> DaphneServer:
        if servers and servers[0].process and servers[0].process.poll() is None:
            return servers[0]
        env = {
            "DJANGO_SETTINGS_MODULE": "tests.browser.settings",
            "WEB_TEST_STATIC_ROOT": str(static_root),
            "MOCK_TOKEN_DELAY_MS": MOCK_TOKEN_DELAY_MS,
            # Two mock routes: the page's model picker has a choice, and a reply can fail
            # over from the first to the second ([[mock:fail-model:mock-1]]).
            "AI_ROUTES": BROWSER_ROUTES,
            "AI_ALLOWED_MODELS": BROWSER_ROUTES,
            # Keep Django's async-safety guard on in the server (see `browser`).
            "DJANGO_ALLOW_ASYNC_UNSAFE": "",
        }
        with django_db_blocker.unblock():
            server = DaphneServer(env).start()
        servers[:] = [server]
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(browser_server_factory, transactional_db) -> DaphneServer:
    return browser_server_factory()


@pytest.fixture(scope="package")
def browser(django_db_setup):
    """A headless Chromium (Debian's), for the tests of this package.

    Playwright's sync API keeps an asyncio loop in this thread (idle while test code
    runs), which trips Django's "no ORM calls in an async context" guard for every ORM
    call the tests and the database fixtures make between browser steps. These calls are
    plain sync code, so the guard is switched off while the browser lives (this package
    only).
    """
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: run scripts/ensure_chromium.sh "
            "(it installs Debian's chromium with apt-get), then run the browser tests again.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            yield browser
            browser.close()


class ConsoleErrors(list):
    """Console messages of type error and uncaught page errors, as text.

    Chromium logs "Failed to load resource: ... status of 4xx" for every error answer;
    a test that provokes one on purpose says so with :meth:`allow`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.allowed: list[str] = []

    def allow(self, text: str) -> None:
        self.allowed.append(text)

    def unexpected(self) -> list[str]:
        return [e for e in self if not any(text in e for text in self.allowed)]

    def watch(self, page) -> None:
        page.on(
            "console",
            lambda msg: (
                self.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None
            ),
        )
        page.on("pageerror", lambda exc: self.append(f"pageerror: {exc}"))


@pytest.fixture
def console_errors() -> ConsoleErrors:
    return ConsoleErrors()


@pytest.fixture
def page(browser, server, console_errors):
    """A fresh browser context and page; fails the test on console or page errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    page = context.new_page()
    console_errors.watch(page)
    yield page
    context.close()
    unexpected = console_errors.unexpected()
    assert not unexpected, f"errors in the browser console: {unexpected}"


@pytest.fixture
def user(transactional_db):
    return factories.make_user("alice")


@pytest.fixture
def chat_context(user):
    return factories.make_context(user, name="Work")


def login(page, base_url: str, username: str) -> None:
    """Log in through the login form and wait until the chat page has loaded."""
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}")
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready=true]")


@pytest.fixture
def logged_in(page, server, user, chat_context):
    """The page, logged in as ``user``, on the chat page once it has loaded."""
    login(page, server.url, user.username)
    return page
