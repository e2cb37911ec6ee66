"""A production start refuses unsafe or incomplete set-ups, and says what to do.

The command line as an operator runs it (``manage.py``, ``daphne``), as subprocesses with
``DJANGO_SETTINGS_MODULE=chatproject.settings`` and ``DJANGO_DEBUG`` off, from an
environment built from scratch (:func:`tests.deploy.runner.production_environment`):

- no ``DJANGO_SECRET_KEY`` (or the public development key): ``manage.py`` and daphne
  refuse to start, naming the variable;
- ``manage.py check --deploy`` with the HTTPS settings prints no warning, and without them
  reports HSTS, the HTTPS redirect and the secure cookies (Django's own ids), never the
  false alarm of a missing middleware (the project runs subclasses of Django's);
- daphne without ``collectstatic`` (or with a manifest older than the code) refuses to
  start and names the command; after it, the chat page and the admin answer 200.

The checks themselves (``core/checks.py``) are also run in-process against other
``MIDDLEWARE`` lists.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.core.checks import Warning
from django.core.checks.security import base, csrf

from core.checks import check_middleware_subclasses, check_static_files
from core.startup import tune_interpreter
from tests.deploy.runner import ROOT, production_environment
from tests.e2e.server import free_port

DEV_KEY = "django-insecure-dev-key-change-me-in-production-0123456789abcdef"
HTTPS_SETTINGS = {
    "DJANGO_SECURE_SSL_REDIRECT": "true",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SESSION_COOKIE_SECURE": "true",
    "DJANGO_CSRF_COOKIE_SECURE": "true",
    "DJANGO_ALLOWED_HOSTS": "chat.example.com",
}
ADMIN_PASSWORD = "a-long-admin-password-2026"
DAPHNE = [sys.executable, "-m", "daphne"]


def fresh_environment(folder: Path) -> dict[str, str]:
    """The production settings on a new SQLite file and an empty STATIC_ROOT in ``folder``."""
    return production_environment(
        DATABASE_URL=f"sqlite:///{folder / 'db.sqlite3'}",
        DJANGO_STATIC_ROOT=str(folder / "static"),
    )


@pytest.fixture
def prod_env(tmp_path: Path) -> dict[str, str]:
    """:func:`fresh_environment` in the test's own folder."""
    return fresh_environment(tmp_path)


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python manage.py <args>``: its exit code and output (stdout and stderr)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
        check=False,
    )


def daphne(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    """``daphne -b 127.0.0.1 -p <port> chatproject.asgi:application``, as documented."""
    return subprocess.Popen(
        [*DAPHNE, "-b", "127.0.0.1", "-p", str(port), "chatproject.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def refused_start(env: dict[str, str]) -> str:
    """Start daphne, expect it to exit non-zero without serving; its output."""
    process = daphne(env, free_port())
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"daphne kept running instead of refusing to start:\n{output}")
    assert process.returncode != 0, output
    return output


def serving(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start daphne and wait until ``/healthz`` answers 200; the process and its URL."""
    port = free_port()
    process = daphne(env, port)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if process.poll() is not None:
            pytest.fail(f"daphne exited: {process.communicate()[0]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"daphne did not answer /healthz: {process.communicate()[0]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """The documented start (migrate, collectstatic, daphne) plus an admin user."""
    prod_env = fresh_environment(tmp_path_factory.mktemp("served"))
    for args in (["migrate", "--noinput"], ["collectstatic", "--noinput", "-v", "0"]):
        result = manage(prod_env, *args)
        assert result.returncode == 0, result.stdout
    result = manage(
        {**prod_env, "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD},
        *["createsuperuser", "--noinput", "--username", "admin", "--email", "a@example.com"],
    )
    assert result.returncode == 0, result.stdout
    process, url = serving(prod_env)
    try:
        yield url, prod_env
    finally:
        process.terminate()
        process.communicate(timeout=10)


# --- the secret key ---------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("key", [None, "", DEV_KEY], ids=["unset", "empty", "development-key"])
def test_no_real_secret_key_refuses_to_start(prod_env: dict[str, str], key: str | None) -> None:
    env = {k: v for k, v in prod_env.items() if k != "DJANGO_SECRET_KEY"}
    if key is not None:
        env["DJANGO_SECRET_KEY"] = key
    check = manage(env, "check")
    assert check.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY" in check.stdout
    if key is None:
        assert "ImproperlyConfigured: DJANGO_SECRET_KEY is not set" in refused_start(env)


@pytest.mark.e2e
def test_debug_on_keeps_the_development_key(prod_env: dict[str, str]) -> None:
    env = {k: v for k, v in prod_env.items() if k != "DJANGO_SECRET_KEY"}
    check = manage({**env, "DJANGO_DEBUG": "true"}, "check")
    assert check.returncode == 0, check.stdout


# --- check --deploy ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_check_deploy_with_https_settings_reports_nothing(prod_env: dict[str, str]) -> None:
    result = manage({**prod_env, **HTTPS_SETTINGS}, "check", "--deploy")
    assert result.returncode == 0, result.stdout
    assert "System check identified no issues" in result.stdout, result.stdout
    assert "WARNINGS" not in result.stdout


@pytest.mark.e2e
def test_check_deploy_without_https_settings_reports_the_real_findings(
    prod_env: dict[str, str],
) -> None:
    result = manage(prod_env, "check", "--deploy")
    ids = set(re.findall(r"\(([a-z]+\.[WE]\d{3})\)", result.stdout))
    # HSTS, HTTPS redirect, secure session and CSRF cookies: Django's ids and words.
    assert ids == {"security.W004", "security.W008", "security.W010", "security.W016"}, (
        result.stdout
    )
    assert base.W004.msg in result.stdout


# --- collected static files -------------------------------------------------------------------


@pytest.mark.e2e
def test_daphne_refuses_to_start_without_collected_static_files(
    prod_env: dict[str, str],
) -> None:
    assert manage(prod_env, "migrate", "--noinput").returncode == 0
    output = refused_start(prod_env)
    assert "core.E001" in output
    assert "The collected static files are missing" in output
    assert "python manage.py collectstatic --noinput" in output


@pytest.mark.e2e
def test_after_collectstatic_the_pages_answer_200(served: tuple[str, dict[str, str]]) -> None:
    url, _ = served
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/admin/login/").status_code == 200
        login = client.get("/accounts/login/")
        assert login.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
        assert token is not None
        response = client.post(
            "/accounts/login/",
            data={
                "username": "admin",
                "password": ADMIN_PASSWORD,
                "csrfmiddlewaretoken": token.group(1),
            },
        )
        assert response.status_code == 302, response.text
        page = client.get("/")
        assert page.status_code == 200
        # The page names the hashed files collectstatic wrote, and they are served.
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert assets
        for asset in assets:
            assert re.search(r"\.[0-9a-f]{12}\.", asset), asset
            assert client.get(asset).status_code == 200, asset


@pytest.mark.e2e
def test_the_server_sets_its_switch_interval_from_the_environment(
    served: tuple[str, dict[str, str]],
) -> None:
    """``GIL_SWITCH_INTERVAL_MS`` (chatproject/settings.py) reaches the daphne process."""
    _, prod_env = served
    process, _ = serving({**prod_env, "GIL_SWITCH_INTERVAL_MS": "2.5", "LOG_LEVEL": "INFO"})
    process.terminate()
    output, _ = process.communicate(timeout=10)
    logged = [
        json.loads(line)
        for line in output.splitlines()
        if line.startswith("{") and "startup.switch_interval" in line
    ]
    assert [entry["switch_interval_ms"] for entry in logged] == [2.5], output


@pytest.mark.e2e
def test_daphne_refuses_to_start_on_a_stale_manifest(
    served: tuple[str, dict[str, str]],
) -> None:
    """Runs after the test above: it edits the manifest of the served deployment."""
    _, env = served
    manifest_path = Path(env["DJANGO_STATIC_ROOT"]) / "staticfiles.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["paths"]["web/chat.js"]
    manifest_path.write_text(json.dumps(manifest))
    output = refused_start(env)
    assert "The collected static files are stale" in output
    assert "web/chat.js" in output
    assert "python manage.py collectstatic --noinput" in output


# --- the checks, in-process -------------------------------------------------------------------

ASYNC_MIDDLEWARE = [
    "core.async_middleware.AsyncSecurityMiddleware",
    "core.async_middleware.AsyncSessionMiddleware",
    "core.async_middleware.AsyncCsrfViewMiddleware",
    "core.async_middleware.AsyncXFrameOptionsMiddleware",
]
STOCK_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]


def test_subclasses_get_the_findings_django_gives_its_own_middleware(settings) -> None:
    settings.MIDDLEWARE = ASYNC_MIDDLEWARE
    settings.SECURE_HSTS_SECONDS = 0
    settings.SECURE_SSL_REDIRECT = False
    settings.CSRF_COOKIE_SECURE = False
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    assert check_middleware_subclasses() == [base.W004, base.W008, base.W019, csrf.W016]
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = False
    settings.SECURE_HSTS_PRELOAD = False
    settings.SECURE_SSL_REDIRECT = True
    settings.CSRF_COOKIE_SECURE = True
    settings.X_FRAME_OPTIONS = "DENY"
    assert check_middleware_subclasses() == [base.W005, base.W021]


def test_stock_middleware_findings_are_left_to_django(settings) -> None:
    settings.MIDDLEWARE = STOCK_MIDDLEWARE
    settings.SECURE_HSTS_SECONDS = 0
    settings.CSRF_COOKIE_SECURE = False
    assert check_middleware_subclasses() == []


def test_missing_middleware_is_reported_under_the_project_ids(settings) -> None:
    settings.MIDDLEWARE = ["core.async_middleware.AsyncSessionMiddleware"]
    found = check_middleware_subclasses()
    assert [m.id for m in found] == ["core.W001", "core.W002", "core.W003"]
    assert all(isinstance(m, Warning) for m in found)
    assert found[0].msg == base.W001.msg


def test_static_files_check_only_applies_to_the_manifest_storage(settings, tmp_path) -> None:
    settings.STATIC_ROOT = str(tmp_path)
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    assert check_static_files() == []
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "web.storage.ManifestStaticStorage"},
    }
    assert [m.id for m in check_static_files()] == ["core.E001"]


@pytest.mark.django_db
def test_https_redirect_spares_the_probes_and_the_scraper(settings, client) -> None:
    """Health checks and /metrics reach daphne's private port in plain HTTP."""
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/api/v1/docs/").status_code == 301
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(("setting", "expected"), [(1.0, 0.001), (0, None)])
def test_tune_interpreter_sets_the_switch_interval_unless_zero(settings, setting, expected):
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    try:
        settings.GIL_SWITCH_INTERVAL_MS = setting
        assert tune_interpreter() == pytest.approx(expected or 0.004)
        assert sys.getswitchinterval() == pytest.approx(expected or 0.004)
    finally:
        sys.setswitchinterval(before)
