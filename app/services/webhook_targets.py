"""Where a webhook may point (server-side request forgery): checked when it is registered and
again before every send, since what a name resolves to can change in between.

A target is an http or https URL with a host and no credentials. Every address its host
resolves to must be public: loopback, private, link-local, shared (carrier-grade NAT),
reserved, multicast and unspecified addresses are refused, IPv4 inside IPv6 (`::ffff:10.0.0.1`)
judged as IPv4. The operator may allow non-public ones: all but multicast and unspecified
(`webhook_allow_private`), or named hosts and networks (`webhook_allow_hosts`:
`hooks.internal,*.corp.example,10.20.0.0/16`). The sender connects to an address checked
here, never to a fresh lookup of the name (app.services.webhook_sender).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import httpx

from app.config import Settings
from app.errors import Invalid

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
URL_MAX = 2048
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]")  # controls and spaces: never in a URL we send to
# getaddrinfo cannot be interrupted: lookups run here and are waited for at most the connect
# timeout (a hung one keeps its thread until the resolver gives up; the pool bounds them).
_LOOKUPS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")


class Refused(Exception):
    """A URL, or what its host resolves to, that webhooks may not go to; the message says why."""


@dataclass(frozen=True)
class Target:
    url: httpx.URL
    host: str  # as sent in Host and TLS's server name (IDNA-encoded)
    port: int
    addresses: tuple[IPAddress, ...]  # every one of them allowed


def parse(url: str) -> httpx.URL:
    """The URL if its form is one webhooks may take (http/https, a host, no credentials), else Refused."""
    if len(url) > URL_MAX:
        raise Refused(f"is {len(url)} characters long; at most {URL_MAX} are allowed")
    if _CONTROL.search(url):
        raise Refused("holds a space or a control character")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise Refused(f"is not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise Refused("must be an http:// or https:// URL")
    if not parsed.host:
        raise Refused("has no host")
    if parsed.userinfo:
        raise Refused("must not hold a user name or password")
    return parsed


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _plain(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def kind(ip: IPAddress) -> str | None:
    """What makes `ip` no public address (its kind, for messages), or None for a public one."""
    ip = _plain(ip)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not public"
    return None


def _host_allowed(host: str, entries: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for entry in entries:
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if host == entry:
            return True
    return False


def _networks(settings: Settings) -> tuple[list[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    hosts, nets = [], []
    for raw in settings.webhook_allow_hosts.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.append(entry.rstrip("."))
    return hosts, nets


def allowed(ip: IPAddress, host: str, settings: Settings) -> str | None:
    """None if webhooks may go to `ip` (resolved from `host`), else why not."""
    problem = kind(ip)
    if problem is None:
        return None
    hosts, nets = _networks(settings)
    if _host_allowed(host, hosts) or any(_plain(ip) in n or ip in n for n in nets):
        return None
    if settings.webhook_allow_private and problem not in ("unspecified", "multicast"):
        return None
    where = f"{ip} is" if _literal(host) is not None else f"{host} resolves to {ip},"
    return f"{where} a {problem} address: webhooks go to public addresses only"


def resolve(host: str, port: int, timeout_s: float) -> tuple[IPAddress, ...]:
    """Every address `host` resolves to (an IP literal: itself); Refused if none in time."""
    literal = _literal(host)
    if literal is not None:
        return (literal,)
    future = _LOOKUPS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout_s)
    except FutureTimeout:
        raise Refused(f"the host {host} did not resolve within {timeout_s:g} s") from None
    except (OSError, UnicodeError) as exc:
        raise Refused(f"the host {host} does not resolve ({exc})") from None
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise Refused(f"the host {host} does not resolve")
    return tuple(found)


def target(url: str, settings: Settings) -> Target:
    """The URL checked and resolved, every address allowed; Refused otherwise."""
    parsed = parse(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = resolve(host, port, settings.webhook_connect_timeout_s)
    for ip in addresses:
        problem = allowed(ip, host, settings)
        if problem is not None:
            raise Refused(problem)
    return Target(parsed, host, port, addresses)


def check(url: str, settings: Settings, loc: str = "url") -> str:
    """The URL, normalized, if webhooks may go to it; else 422 naming `loc`."""
    try:
        return str(target(url, settings).url)
    except Refused as exc:
        raise Invalid(f"{loc}: {exc}", [{"loc": loc, "message": str(exc)}]) from None
