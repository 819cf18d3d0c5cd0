"""Where a webhook may go: http(s) URLs whose host resolves only to public addresses.

A callback URL is checked when it is submitted (400) and again before every delivery, since
DNS can change between the two (rebinding). Loopback, private, link-local (cloud metadata at
169.254.169.254), multicast, reserved and unspecified addresses are refused, IPv4 inside IPv6
included, unless the host is listed in WEBHOOK_ALLOW_HOSTS (a receiver on this machine, tests).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from imageclf import settings

MAX_URL = 2048


class TargetRefused(ValueError):
    """The URL may not receive webhooks; the message says why."""


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback)


def check_target(url: str) -> str:
    """`url` if webhooks may be sent there now; TargetRefused otherwise."""
    if len(url) > MAX_URL:
        raise TargetRefused(f"callback_url is longer than {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("callback_url must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise TargetRefused("callback_url must not carry a user name or password")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused("callback_url has an invalid port") from None
    host = parts.hostname
    if host in settings.WEBHOOK_ALLOW_HOSTS:
        return url
    try:
        found = {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"callback_url's host {host!r} does not resolve ({exc})") from None
    private = sorted(a for a in found if not _public(a))
    if private:
        raise TargetRefused(f"callback_url's host {host!r} resolves to a loopback, private, link-local or "
                            f"reserved address ({', '.join(private)}); list it in WEBHOOK_ALLOW_HOSTS to allow it")
    return url
