"""Which addresses a webhook may be sent to (docs/api.md#webhooks).

A subscription's URL is checked when it is saved (its host resolved, every address
checked) and again at every delivery, on the addresses the connection really uses
(:class:`GuardedResolver`), so a name that later resolves to an inner address (DNS
rebinding) is refused too. Loopback, private, link-local, unspecified, multicast, reserved
and other non-global addresses are refused unless ``WEBHOOK_ALLOW_PRIVATE_URLS`` is true.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from django.conf import settings


class AddressRefused(OSError):
    """The URL's host is (or resolves to) an address webhooks may not reach."""


def address_forbidden(address: str) -> bool:
    """Whether webhooks may not reach this IP address (an IPv4-mapped IPv6 address is
    judged as the IPv4 address it carries)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
        or not ip.is_global
    )


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def url_refusal(url: str) -> str | None:
    """Why ``url`` may not be a webhook URL, or ``None`` when it may (resolves its host)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "Enter a valid URL."
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Enter an http or https URL."
    if parts.username or parts.password:
        return "The URL may not carry credentials."
    if settings.WEBHOOK_ALLOW_PRIVATE_URLS:
        return None
    host = parts.hostname
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(
                host, port or (443 if parts.scheme == "https" else 80), proto=socket.IPPROTO_TCP
            )
        except (OSError, UnicodeError):
            return "The URL's host could not be resolved."
        addresses = [str(info[4][0]) for info in infos]
    if not addresses or any(address_forbidden(address) for address in addresses):
        return "The URL's host is a loopback, private, link-local or reserved address."
    return None


def host_refusal(host: str) -> str | None:
    """At delivery: why an IP-literal host may not be reached (names go through
    :class:`GuardedResolver`, which sees the addresses the connection uses)."""
    if settings.WEBHOOK_ALLOW_PRIVATE_URLS:
        return None
    literal = _literal(host.strip("[]"))
    if literal is not None and address_forbidden(literal):
        return f"address {literal} is not allowed"
    return None


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing names that resolve to a forbidden address."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host``; raise :class:`AddressRefused` if any address is forbidden."""
        results = await self._inner.resolve(host, port, family)
        if not settings.WEBHOOK_ALLOW_PRIVATE_URLS:
            for result in results:
                if address_forbidden(result["host"]):
                    raise AddressRefused(f"{host} resolves to a forbidden address")
        return results

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()
