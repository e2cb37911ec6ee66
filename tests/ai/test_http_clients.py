"""``AI_HTTP_CLIENT``: the SDKs on their aiohttp client (default) or their httpx2 client.

Both run the real SDK against the fake servers; the rest of the adapter tests run on the
default (aiohttp), these check that each choice is really in use and streams the same.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import httpx2
import pytest
from django.core import checks

from ai.errors import AIRateLimited, AIUnavailable
from ai.providers import get_provider
from ai.providers._clients import _aiohttp_sessions
from ai.providers.base import ChatMessage
from tests.fakes.fixtures import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, collect
from tests.fakes.openai_server import FakeOpenAIServer, OpenAIScript, rate_limited

HISTORY = [ChatMessage("user", "Plan my day")]


@pytest.fixture
def openai_on(settings, openai_server):
    def configure(kind: str):
        settings.AI_PROVIDER = "openai"
        settings.OPENAI_API_KEY = FAKE_OPENAI_KEY
        settings.OPENAI_BASE_URL = openai_server.base_url
        settings.AI_MAX_RETRIES = 0
        settings.AI_HTTP_CLIENT = kind
        return get_provider()

    return configure


def _transport(provider) -> object:
    return provider._client()._client._transport


def test_default_is_aiohttp():
    from chatproject import settings as project_settings

    assert project_settings.AI_HTTP_CLIENT == "aiohttp"


@pytest.mark.parametrize(
    ("kind", "transport_name"),
    [("aiohttp", "AiohttpTransport"), ("httpx", "AsyncHTTPTransport")],
)
async def test_each_client_is_used_and_streams_the_same(
    openai_on, openai_server, kind, transport_name
):
    provider = openai_on(kind)
    openai_server.push(OpenAIScript(tokens=["Good", " morning", " \U0001f44b"]))
    result = await collect(provider, HISTORY, system="S", max_output_tokens=50)
    assert type(_transport(provider)).__name__ == transport_name
    assert result.error is None
    assert result.deltas == ["Good", " morning", " \U0001f44b"]
    assert (result.end.usage.input_tokens, result.end.usage.output_tokens) == (12, 3)


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_each_client_maps_errors_the_same(openai_on, openai_server, kind):
    provider = openai_on(kind)
    openai_server.push(rate_limited())
    assert isinstance((await collect(provider, HISTORY)).error, AIRateLimited)
    openai_server.push(OpenAIScript(tokens=["a", "b", "c", "d"], drop_after=2))
    result = await collect(provider, HISTORY)
    assert result.deltas == ["a", "b"]
    assert isinstance(result.error, AIUnavailable) and result.error.retryable
    assert result.end is None


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_each_client_reuses_its_connection(openai_on, openai_server, kind):
    provider = openai_on(kind)
    for _ in range(5):
        openai_server.push(OpenAIScript(tokens=["x", "y"]))
        assert (await collect(provider, HISTORY)).error is None
    ports = {request.client_port for request in openai_server.requests}
    assert len(openai_server.requests) == 5 and len(ports) == 1


async def test_refused_connection_is_unavailable(settings):
    settings.AI_PROVIDER = "openai"
    settings.OPENAI_API_KEY = FAKE_OPENAI_KEY
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    settings.AI_MAX_RETRIES = 0
    result = await collect(get_provider(), HISTORY)
    assert isinstance(result.error, AIUnavailable)
    assert result.error.retryable


def test_sessions_of_closed_loops_are_closed_quietly(openai_on, openai_server, caplog):
    provider = openai_on("aiohttp")

    async def one_turn() -> object:
        openai_server.push(OpenAIScript(tokens=["x"]))
        assert (await collect(provider, HISTORY)).error is None
        return provider._client()

    first = asyncio.run(one_turn())  # its loop is closed when asyncio.run returns
    (session,) = _aiohttp_sessions(first)
    assert not session.closed  # nothing closed it yet: its pooled connection is open
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        second = asyncio.run(one_turn())  # a new loop: the old loop's client is swept
        assert session.closed
        del first, session
        gc.collect()
    assert second is not None
    assert "Unclosed" not in caplog.text


def test_unknown_http_client_is_a_check_error(settings):
    settings.AI_HTTP_CLIENT = "requests"
    errors = [e for e in checks.run_checks(tags=["ai"]) if e.id == "ai.E008"]
    assert len(errors) == 1
    assert "AI_HTTP_CLIENT" in errors[0].msg and "aiohttp, httpx" in errors[0].hint


async def test_anthropic_uses_aiohttp_by_default(settings, anthropic_server):
    from tests.fakes.anthropic_server import AnthropicScript

    settings.AI_PROVIDER = "anthropic"
    settings.ANTHROPIC_API_KEY = FAKE_ANTHROPIC_KEY
    settings.ANTHROPIC_BASE_URL = anthropic_server.base_url
    settings.AI_MAX_RETRIES = 0
    provider = get_provider()
    anthropic_server.push(AnthropicScript(tokens=["Hi", " there"]))
    result = await collect(provider, HISTORY)
    assert result.deltas == ["Hi", " there"]
    assert type(_transport(provider)).__name__ == "AiohttpTransport"
    assert not isinstance(_transport(provider), httpx2.AsyncHTTPTransport)


def _self_signed(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_each_client_streams_over_tls_and_checks_the_certificate(
    settings, tmp_path, monkeypatch, kind
):
    """Real providers are HTTPS: the certificate is verified (a trusted one streams, an
    unknown one is refused as unavailable, never accepted)."""
    cert_file, key_file = _self_signed(tmp_path)
    with FakeOpenAIServer().enable_tls(cert_file, key_file) as server:
        settings.AI_PROVIDER = "openai"
        settings.OPENAI_API_KEY = FAKE_OPENAI_KEY
        settings.OPENAI_BASE_URL = server.base_url
        settings.AI_MAX_RETRIES = 0
        settings.AI_HTTP_CLIENT = kind
        assert server.base_url.startswith("https://")

        monkeypatch.setenv("SSL_CERT_FILE", cert_file)  # read when the client is built
        server.push(OpenAIScript(tokens=["Secure", " hello"]))
        result = await collect(get_provider(), HISTORY)
        assert result.error is None and result.deltas == ["Secure", " hello"]

        monkeypatch.delenv("SSL_CERT_FILE")
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "nothing-trusted-here"))
        settings.AI_TIMEOUT_SECONDS = 5.0  # a new provider and client, without the cert
        refused = await collect(get_provider(), HISTORY)
        chain, cause = [], refused.error.__cause__
        while cause is not None and len(chain) < 8:
            chain.append(repr(cause))
            cause = cause.__cause__ or cause.__context__
        assert any("CERTIFICATE_VERIFY_FAILED" in link for link in chain), chain
        assert isinstance(refused.error, AIUnavailable)
        assert len(server.requests) == 1
