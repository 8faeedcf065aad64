"""The URL policy every image fetch and every redirect hop obeys: which URLs may be fetched, which origin gets
the API key, which addresses may be connected to (see ``fetcher`` for the whole set of rules)."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import unicodedata
from dataclasses import dataclass
from fnmatch import fnmatch
from urllib.parse import urlsplit

import requests
import urllib3
from urllib3.util import parse_url

DEFAULT_PORTS = {"http": 80, "https": 443}

_AUTHORITY = re.compile(r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?", re.IGNORECASE)
"""The only authority form accepted: ASCII host or bracketed IPv6, optional numeric port; nothing else."""
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)


class ImageError(Exception):
    """An image could not be fetched or decoded; the message is one line, fit for a user."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    """Lower case; IPv6 without brackets, in compressed form."""
    port: int

    @property
    def default_port(self) -> bool:
        return DEFAULT_PORTS[self.scheme] == self.port


@dataclass(frozen=True)
class Target:
    """A URL the policy let through: ``url`` is exactly what the HTTP client will send."""
    url: str
    origin: Origin
    label_studio: bool


@dataclass(frozen=True)
class _HostRule:
    host: str
    """An exact host, or an fnmatch pattern when ``pattern``."""
    port: int | None
    """None: the scheme's default port for an exact host, any port for a pattern."""
    pattern: bool

    def matches(self, origin: Origin) -> bool:
        if self.pattern:
            return fnmatch(origin.host, self.host) and self.port in (None, origin.port)
        return origin.host == self.host and (origin.port == self.port if self.port else origin.default_port)


class UrlPolicy:
    """Which URLs may be fetched, which get the API key, and which addresses may be connected to."""

    def __init__(self, label_studio_url: str, allowed_hosts: tuple[str, ...]):
        try:
            self.label_studio = _origin(label_studio_url) if label_studio_url else None
        except ImageError:
            self.label_studio = None  # reported when a relative URL needs it
        self.allowed_hosts = allowed_hosts
        self.rules = [_host_rule(entry) for entry in allowed_hosts]

    def check(self, url: str) -> Target:
        """Refuse what the rules forbid, before any connection is made."""
        _refuse_odd_characters(url)
        origin = _origin(url)
        prepared = _prepare(url)
        if {_origin(prepared), _urllib3_origin(url), _urllib3_origin(prepared)} != {origin}:
            raise ImageError(f"image {quoted(url)}: ambiguous URL (its parses disagree on the host)")
        if origin == self.label_studio:
            return Target(prepared, origin, label_studio=True)
        if not any(rule.matches(origin) for rule in self.rules):
            raise ImageError(self._not_allowed(origin))
        return Target(prepared, origin, label_studio=False)

    def trusts(self, origin: Origin) -> bool:
        """Label Studio and exactly named hosts may be on private addresses; pattern matches may not."""
        return origin == self.label_studio or any(not r.pattern and r.matches(origin) for r in self.rules)

    def addresses(self, origin: Origin, timeout: float) -> list[str]:
        """The addresses to connect to for ``origin``: resolved within ``timeout``, all public unless trusted."""
        addresses = _resolve(origin.host, origin.port, timeout)
        if not self.trusts(origin):
            for address in addresses:
                if not _is_public(ipaddress.ip_address(address)):
                    raise ImageError(f"image host {origin.host} resolves to the non-public address {address}: "
                                     "refused (name it exactly in GROUNDLOOP_ALLOWED_IMAGE_HOSTS to allow it)")
        return addresses

    def _not_allowed(self, origin: Origin) -> str:
        known_host = any(origin.host == h for h in self._exact_hosts())
        where = "" if origin.default_port or not known_host else f" on port {origin.port}"
        allowed = ", ".join(self.allowed_hosts) or "Label Studio's own URL alone"
        return (f"image host {origin.host} is not allowed{where} (allowed: {allowed}; "
                "see GROUNDLOOP_ALLOWED_IMAGE_HOSTS)")

    def _exact_hosts(self) -> list[str]:
        hosts = [r.host for r in self.rules if not r.pattern]
        return hosts + ([self.label_studio.host] if self.label_studio else [])


def _refuse_odd_characters(url: str) -> None:
    """Backslashes, whitespace and control characters: parsers disagree on them (and on where a host ends)."""
    if any(ch == "\\" or ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in url):
        raise ImageError(f"image {quoted(url)}: backslashes, whitespace and control characters are not allowed")


def _prepare(url: str) -> str:
    """``url`` as requests will send it; ImageError for anything requests refuses."""
    try:
        prepared = requests.models.PreparedRequest()
        prepared.prepare_url(url, None)
    except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError, UnicodeError):
        raise ImageError(f"image {quoted(url)}: malformed URL") from None
    return prepared.url


def _origin(url: str) -> Origin:
    """The origin of ``url`` read from its text by the strict authority rule, checked against ``urlsplit``."""
    scheme, _, rest = url.partition(":")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ImageError(f"image {quoted(url)}: only http(s) URLs are allowed, not {scheme or 'none'}:")
    if not rest.startswith("//"):
        raise ImageError(f"image {quoted(url)}: no host")
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    if "@" in authority:
        raise ImageError(f"image {quoted(url)}: userinfo (@) is not allowed")
    match = _AUTHORITY.fullmatch(authority)
    if not match:
        raise ImageError(f"image {quoted(url)}: malformed host or port")
    origin = Origin(scheme, canonical_host(match["host"], url), _port(match["port"], scheme, url))
    try:
        parts = urlsplit(url)
        second = Origin(parts.scheme, canonical_host(parts.hostname or "", url), parts.port or DEFAULT_PORTS[scheme])
    except (ValueError, KeyError):
        second = None
    if second != origin:
        raise ImageError(f"image {quoted(url)}: ambiguous URL (its parses disagree on the host)")
    return origin


def _urllib3_origin(url: str) -> Origin | None:
    """The origin urllib3 connects to; None when it sees userinfo (or anything it cannot parse)."""
    try:
        parsed = parse_url(url)
    except urllib3.exceptions.LocationParseError:
        return None
    if parsed.auth is not None or not parsed.host or parsed.scheme not in DEFAULT_PORTS:
        return None
    return Origin(parsed.scheme, canonical_host(parsed.host, url), parsed.port or DEFAULT_PORTS[parsed.scheme])


def canonical_host(host: str, url: str) -> str:
    """Lower case; IPv6 compressed; numbers only as a dotted quad, since parsers read ``127.1`` differently."""
    host = host.lower()
    try:
        if host.startswith("["):
            return ipaddress.IPv6Address(host.strip("[]")).compressed
        if ":" in host:
            return ipaddress.IPv6Address(host).compressed  # urlsplit's hostname drops the brackets
        if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
            return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise ImageError(f"image {quoted(url)}: host {host} is not allowed (an IP address must be a dotted "
                         "quad or a bracketed IPv6 address)") from None
    if not host:
        raise ImageError(f"image {quoted(url)}: no host")
    return host


def _port(text: str | None, scheme: str, url: str) -> int:
    if text is None:
        return DEFAULT_PORTS.get(scheme, 0)
    if not 0 < int(text) < 65536:
        raise ImageError(f"image {quoted(url)}: port {int(text)} is out of range")
    return int(text)


def _host_rule(entry: str) -> _HostRule:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``, a bare IPv6 address, or a pattern with ``*``/``?``."""
    text = entry.strip().lower()
    host, port_text = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else (rest or None)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    port = int(port_text) if port_text and port_text.isdigit() and 0 < int(port_text) < 65536 else None
    pattern = "*" in host or "?" in host
    try:
        host = host if pattern else canonical_host(host, text)
    except ImageError:
        host = ""
    if not host or (port_text is not None and port is None):
        raise ValueError(f"GROUNDLOOP_ALLOWED_IMAGE_HOSTS entry {entry!r} is not host, host:port or a pattern")
    return _HostRule(host, port, pattern)


def _resolve(host: str, port: int, timeout: float) -> list[str]:
    """getaddrinfo in a helper thread, so a slow resolver cannot outlast the deadline."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found: dict[str, object] = {}

    def lookup() -> None:
        try:
            found["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            found["infos"] = []

    thread = threading.Thread(target=lookup, name="image-host-lookup", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ImageError(f"image host {host}: no address within the time limit")
    addresses = list(dict.fromkeys(info[4][0].split("%")[0] for info in found["infos"]))
    if not addresses:
        raise ImageError(f"image host {host} does not resolve")
    return addresses


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global and not multicast; an IPv6 address carrying an IPv4 one (mapped, 6to4, NAT64) must pass for both."""
    if not ip.is_global or ip.is_multicast:
        return False
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in ipaddress.IPv6Network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        return embedded is None or _is_public(embedded)
    return True


def short_url(url: str, limit: int = 120) -> str:
    """``url`` fit for one line of a message or log: non-printable characters escaped (a CR/LF in a URL cannot
    forge a log line), truncated to ``limit`` characters."""
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(url))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(url: str) -> str:
    """``short_url`` in quotes, so a message shows where the URL ends."""
    return f"'{short_url(url)}'"
