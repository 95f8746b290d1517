"""Who the prefetch fallback may call (the guard against server-side request forgery).

A request names its ``fhirServer``; without this guard any caller could make the service fetch
from loopback, the cluster's private network or a cloud metadata endpoint. The rules:

- ``CDS_ALLOWED_FHIR_SERVERS`` set: only the URL prefixes it lists are called, and a listed
  prefix is trusted as configured (any scheme it names, any address its host has).
- Unset: a fhirServer must be https and its host must be public. The host is resolved and EVERY
  address it resolves to is checked (a public name pointing inward is caught); loopback,
  private (RFC 1918), shared (CGNAT 100.64.0.0/10), link-local (169.254.169.254 and
  fd00:ec2::254 among them), unique-local, site-local, unspecified, multicast, reserved and
  other special-purpose addresses are refused, as are the IPv6 forms of such IPv4 addresses
  (IPv4-mapped, 6to4, NAT64) and IP literals written other than as a dotted quad or IPv6.
- ``CDS_ALLOW_PRIVATE_FHIR_SERVERS=true`` (development only; ignored when the allowlist is set)
  lifts the scheme and address checks.
- A URL with user information (``user:pass@``) is always refused: requests would send it as
  Basic credentials in place of the bearer token.

The check runs twice: on the URL before any fetch (:meth:`Policy.check`, the reason the caller
sees), and in the connection itself (:class:`GuardedHTTPSConnection`), which resolves the host,
checks every address and connects only to an address it checked, then checks the socket's peer.
Connecting to the checked address, rather than checking and letting the HTTP library resolve the
name again, closes the DNS-rebinding gap between check and connect without touching TLS: SNI and
certificate verification still use the host name. The connection-level check also sees the host
exactly as urllib3 parsed it, so a URL-parser disagreement cannot route around it. Each lookup
waits at most the connect timeout (CDS_FHIR_CONNECT_TIMEOUT): a host whose name does not resolve in
time counts as unresolvable (:class:`Resolver`: a bounded pool shared by all requests, one lookup in
flight per name, a name that timed out refused at once for NEGATIVE_TTL seconds, so a caller naming
hosts whose DNS never answers holds at most one worker per name and cannot starve other requests'
lookups unless it names more such hosts than there are workers within that time).

Every URL fetched, not only fhirServer, is checked (:meth:`Policy.check_fetch`): on fhirServer's origin
and under its path, with no dot segment (also percent-encoded) or backslash in its path that a server
could read as another path, and on the allowlist when one is set.

The session (:func:`session`) is this module's own: ``trust_env`` is off, so environment proxies
(HTTP(S)_PROXY, ALL_PROXY), ``.netrc`` credentials and REQUESTS_CA_BUNDLE are not used for
fhirServer calls (a proxy would make the connected peer the proxy, not the server checked)."""
from __future__ import annotations

import http.cookiejar
import ipaddress
import re
import socket
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union
from urllib.parse import unquote

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, LocationParseError, NameResolutionError, NewConnectionError
from urllib3.util import connection, parse_url

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
DEFAULT_PORTS = {"http": 80, "https": 443}
RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
CGNAT = ipaddress.ip_network("100.64.0.0/10")
UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# a host that inet_aton would read as an IPv4 address: 1 to 4 decimal, octal or hex parts
NUMERIC_HOST = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)
OPT_IN = "CDS_ALLOW_PRIVATE_FHIR_SERVERS"
LOOKUP_WORKERS = 32
NEGATIVE_TTL = 30.0  # seconds a name whose lookup timed out is refused without a new lookup
# the path of an absolute URL: after scheme://authority, before ?query or #fragment
URL_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\\]*([^?#]*)")
DOT_SEGMENTS = {".", ".."}


class Resolver:
    """getaddrinfo with a timeout (it has none of its own), its lookups in a bounded pool shared by
    every request. A lookup still running when its caller gives up cannot be stopped, so: one lookup
    per (host, port, family) is in flight at a time, every caller of that name waits on it; a name
    whose lookup timed out is refused at once for NEGATIVE_TTL seconds (or until that lookup ends);
    a lookup not yet started when its caller gave up is cancelled."""

    def __init__(self, workers: int = LOOKUP_WORKERS, negative_ttl: float = NEGATIVE_TTL):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="egress-dns")
        self._negative_ttl = negative_ttl
        self._lock = threading.RLock()  # a lookup already done runs its callback in the caller, lock held
        self._in_flight: dict[tuple[str, int, int], Future] = {}
        self._timed_out: dict[tuple[str, int, int], float] = {}  # name -> until when it is refused

    def resolve(self, host: str, port: int, timeout: float | None) -> list[Any]:
        """getaddrinfo's answer for a stream socket; socket.gaierror when there is none within ``timeout``."""
        key = (host, port, int(connection.allowed_gai_family()))
        now = time.monotonic()
        with self._lock:
            if self._timed_out.get(key, 0.0) > now:
                raise socket.gaierror(socket.EAI_AGAIN, "name resolution timed out recently")
            future = self._in_flight.get(key)
            if future is None:
                future = self._pool.submit(socket.getaddrinfo, host, port, key[2], socket.SOCK_STREAM)
                self._in_flight[key] = future
                future.add_done_callback(lambda done: self._finished(key, done))
        try:
            return list(future.result(timeout))
        except (UnicodeError, ValueError):  # a name the IDNA codec refuses (an empty or a 64-character label)
            raise socket.gaierror(socket.EAI_NONAME, "the name does not resolve") from None
        except (FutureTimeout, CancelledError):
            with self._lock:
                if not future.done():
                    self._timed_out[key] = time.monotonic() + self._negative_ttl
                    for name in [k for k, until in self._timed_out.items() if until <= now]:
                        del self._timed_out[name]
            future.cancel()  # a lookup still queued never runs
            raise socket.gaierror(socket.EAI_AGAIN, "name resolution timed out") from None

    def _finished(self, key: tuple[str, int, int], future: Future) -> None:
        with self._lock:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
            self._timed_out.pop(key, None)  # it answered (or failed) at last: the next caller looks it up again


RESOLVER = Resolver()


def escapes(url: str) -> bool:
    """Whether a URL's path could be read as another path than it is written: a dot segment ("..",
    ".", also percent-encoded, at any depth of encoding, or with ;parameters) or a backslash."""
    m = URL_PATH.match(url)
    if not m or "\\" in url.split("?", 1)[0]:
        return True
    path = m.group(1)
    for _ in range(4):  # %252e%252e is %2e%2e to a server that decodes twice
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return "\\" in path or any(segment.split(";", 1)[0] in DOT_SEGMENTS for segment in path.split("/"))


class Refused(Exception):
    """A fhirServer this service may not call; the message is the reason, safe to show (it names
    the rule broken, never the URL, its credentials or the addresses the host resolved to)."""


def address_class(ip: IPAddress) -> str | None:
    """Why an address may not be called by default ("loopback", ...); None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if inner is not None:
            why = address_class(inner)
            return f"{why} (in an IPv6 form)" if why else None
    checks = (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
              ("multicast", ip.is_multicast), ("private (RFC 1918)", any(ip in n for n in RFC1918)),
              ("shared (CGNAT, 100.64.0.0/10)", ip in CGNAT), ("unique-local (fc00::/7)", ip in UNIQUE_LOCAL),
              ("reserved", ip.is_reserved),
              ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
              ("special-purpose (not globally routable)", not ip.is_global))
    return next((why for why, hit in checks if hit), None)


def literal(host: str) -> IPAddress | None:
    """The address an IP-literal host names, None for a name; Refused for a numeric host that is
    neither a dotted quad nor IPv6 (2130706433, 0x7f.1, 0177.0.0.1: parsers disagree on them)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if NUMERIC_HOST.fullmatch(bare):
        raise Refused("fhirServer is not allowed: its host is an IP address in a non-standard "
                      "(decimal, octal or hexadecimal) form")
    return None


def _origin(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path without trailing slash) of an http(s) URL; ValueError otherwise."""
    try:
        parts = parse_url(url)
    except LocationParseError:
        raise ValueError("is not a URL") from None
    scheme = (parts.scheme or "").lower()
    if scheme not in DEFAULT_PORTS or not parts.host:
        raise ValueError("is not an absolute http(s) URL")
    if parts.auth is not None:
        raise ValueError("has user information (user:password@)")
    host = parts.host.lower().strip("[]")
    port = DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    return scheme, host, port, (parts.path or "").rstrip("/")


@dataclass(frozen=True)
class Policy:
    """Where fhirServer calls may go (see the module docstring)."""
    allowlist: tuple[tuple[str, str, int, str], ...]
    allow_private: bool

    def listed(self, origin: tuple[str, str, int, str]) -> bool:
        return any(origin[:3] == entry[:3] and _under(origin[3], entry[3]) for entry in self.allowlist)

    def check_fetch(self, url: str, base: str) -> None:
        """Refused unless ``url`` (a query or a next page) may be fetched from fhirServer ``base``
        (itself checked by :meth:`check`): same origin, under its path, no path that a server could
        read otherwise (:func:`escapes`), and on the allowlist when one is set."""
        try:
            origin, home = _origin(url), _origin(base)
        except ValueError as exc:
            raise Refused(f"a FHIR URL to fetch {exc}") from None
        if escapes(url):
            raise Refused("a FHIR URL to fetch has a dot segment or a backslash in its path")
        if origin[:3] != home[:3] or not _under(origin[3], home[3]):
            raise Refused("a FHIR URL to fetch is not under fhirServer")
        if self.allowlist and not self.listed(origin):
            raise Refused("a FHIR URL to fetch is not on this service's allowlist (CDS_ALLOWED_FHIR_SERVERS)")

    def trusted(self, scheme: str, host: str, port: int) -> bool:
        """A connection the address checks do not apply to: the opt-in, or an allowlisted origin."""
        if not self.allowlist:
            return self.allow_private
        return any((scheme, host.lower().strip("[]"), port) == entry[:3] for entry in self.allowlist)

    def check(self, url: str, timeout: float | None = None) -> None:
        """Refused (with the reason) unless ``url`` may be called; resolves its host when it must,
        waiting at most ``timeout`` seconds for the answer."""
        try:
            origin = _origin(url)
        except ValueError as exc:
            raise Refused(f"fhirServer is not allowed: its URL {exc}") from None
        scheme, host, port, _ = origin
        if self.allowlist:
            if not self.listed(origin):
                raise Refused("fhirServer is not allowed: it is not on this service's allowlist "
                              "(CDS_ALLOWED_FHIR_SERVERS)")
            return
        if self.allow_private:
            return
        if scheme != "https":
            raise Refused("fhirServer is not allowed: it is not https (plain http is refused unless the "
                          "server is on CDS_ALLOWED_FHIR_SERVERS)")
        try:
            self.addresses(host, port, timeout)
        except socket.gaierror:
            raise Refused("fhirServer's host name could not be resolved") from None

    def addresses(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """The addresses ``host`` resolves to, every one checked (Refused if any is not public);
        socket.gaierror when it does not resolve within ``timeout`` seconds."""
        ip = literal(host)
        if ip is not None:
            found = [ip]
        else:
            infos = RESOLVER.resolve(host.rstrip("."), port, timeout)
            found = [ipaddress.ip_address(str(info[4][0])) for info in infos]
            if not found:
                raise socket.gaierror(socket.EAI_NONAME, "no address")
        for address in found:
            why = address_class(address)
            if why:
                where = "is" if ip is not None else "resolves to"
                raise Refused(f"fhirServer is not allowed: its host {where} an address that is {why} "
                              f"(set CDS_ALLOWED_FHIR_SERVERS to allow a server inside the network)")
        return list(dict.fromkeys(str(a) for a in found))


def _under(path: str, prefix: str) -> bool:
    """Whether a path (no trailing slash) is ``prefix`` or below it."""
    return path == prefix or path.startswith(prefix + "/")


def policy(config: dict[str, Any]) -> Policy:
    """The policy a configuration sets; ValueError naming a bad allowlist entry."""
    return _policy(str(config["CDS_ALLOWED_FHIR_SERVERS"]), bool(config[OPT_IN]))


@lru_cache(maxsize=16)
def _policy(allowlist: str, allow_private: bool) -> Policy:
    entries = []
    for prefix in (p.strip() for p in allowlist.split(",")):
        if not prefix:
            continue
        try:
            entries.append(_origin(prefix))
        except ValueError as exc:
            raise ValueError(f"CDS_ALLOWED_FHIR_SERVERS entry {prefix!r}: {exc}") from None
    return Policy(tuple(entries), allow_private)


def startup_warnings(config: dict[str, Any]) -> list[str]:
    """What the operator must hear about the policy at start (empty when it is the safe default
    with an allowlist)."""
    rules = policy(config)
    if rules.allowlist:
        return [f"{OPT_IN}=true is ignored: CDS_ALLOWED_FHIR_SERVERS is set"] if rules.allow_private else []
    if rules.allow_private:
        return [f"{OPT_IN}=true: THE PREFETCH FALLBACK MAY CALL ANY fhirServer, loopback, private and cloud "
                "metadata addresses and plain http included; use only for local development"]
    return ["CDS_ALLOWED_FHIR_SERVERS is empty: the prefetch fallback may call any public https fhirServer "
            "(loopback, private, link-local and plain http are refused); list the EHR's FHIR servers"]


class _Guarded:
    """The connection check: resolve, check every address, connect only to a checked address,
    check the peer. ``policy`` and ``scheme`` are set by the pool classes :func:`_pools` makes."""
    policy: Policy
    scheme: str

    def _new_conn(self) -> socket.socket:
        conn: Any = self
        if self.policy.trusted(self.scheme, conn.host, conn.port):
            return super()._new_conn()  # type: ignore[misc]
        timeout = conn.timeout if isinstance(conn.timeout, (int, float)) else None
        try:
            addresses = self.policy.addresses(conn._dns_host, conn.port, timeout)
        except socket.gaierror as exc:
            raise NameResolutionError(conn.host, conn, exc) from exc
        error: Exception | None = None
        for address in addresses:
            try:
                sock = connection.create_connection((address, conn.port), conn.timeout,
                                                    source_address=conn.source_address,
                                                    socket_options=conn.socket_options)
            except socket.timeout:
                error = ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. "
                                                  f"(connect timeout={conn.timeout})")
                continue
            except OSError as exc:
                error = NewConnectionError(conn, f"Failed to establish a new connection: {exc}")
                continue
            try:
                peer = address_class(ipaddress.ip_address(str(sock.getpeername()[0])))
            except (OSError, ValueError):
                peer = "unidentifiable"
            if peer:
                sock.close()
                raise Refused(f"fhirServer is not allowed: the connection reached an address that is {peer}")
            return sock
        raise error or NewConnectionError(conn, "no address to connect to")


class GuardedHTTPConnection(_Guarded, HTTPConnection):
    scheme = "http"


class GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    scheme = "https"


def _pools(rules: Policy) -> dict[str, type]:
    """Pool classes whose connections apply ``rules``."""
    http = type("EgressHTTPConnection", (GuardedHTTPConnection,), {"policy": rules})
    https = type("EgressHTTPSConnection", (GuardedHTTPSConnection,), {"policy": rules})
    return {"http": type("EgressHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("EgressHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https})}


class GuardedAdapter(HTTPAdapter):
    """An HTTPAdapter whose every new connection is checked by a policy."""

    def __init__(self, rules: Policy, **kwargs: Any):
        self.rules = rules
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pools(self.rules)


@lru_cache(maxsize=16)
def session(rules: Policy) -> requests.Session:
    """The session fhirServer calls use under ``rules`` (one per policy, its pool shared by threads):
    guarded connections, no environment settings (proxies, .netrc, CA bundle), no retries, and a
    cookie jar that keeps nothing: the session is shared by every request and user, so a cookie one
    FHIR answer set (a JSESSIONID) must never go out with another request."""
    guarded = requests.Session()
    guarded.trust_env = False
    guarded.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    adapter = GuardedAdapter(rules, pool_connections=8, pool_maxsize=32, max_retries=0)
    guarded.mount("http://", adapter)
    guarded.mount("https://", adapter)
    return guarded
