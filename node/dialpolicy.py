"""The dial policy: which addresses the node may connect to.

Addresses reach the node from untrusted input: mirror hints, peer exchange,
mirror manifests and HTTP redirects. An attacker who controls one of them
can try to make the node connect to its own machine, the local network or a
cloud metadata service (server-side request forgery). Every such address
goes through this policy before any DNS lookup or connection.

The checks come in two steps:

1. ``check_url``, ``check_peer`` and ``check_host`` check the text. IP
   literals are checked completely here. Host names pass when their syntax
   is safe, and ``DialTarget.address`` is then ``None``: the caller must
   resolve the name and pass every resolved address to ``check_resolved``
   before connecting, and connect only to those addresses.
2. ``check_address`` and ``check_resolved`` check IP addresses against
   explicit tables of IPv4 and IPv6 ranges.

The tables do not use ``ipaddress``'s ``is_private`` and ``is_global``,
because those classify several dangerous addresses as global: multicast
``224.0.0.1``, IPv4-compatible ``::127.0.0.1``, NAT64 ``64:ff9b::a9fe:a9fe``
and 6to4 ``2002:a9fe:a9fe::1`` (Python 3.11). Anything outside the public
unicast space is rejected unless a flag allows its range: ``allow_loopback``
for 127.0.0.0/8 and ::1, ``allow_private`` for RFC 1918, 100.64.0.0/10,
fc00::/7 and local-only names. Link-local, metadata, unspecified,
multicast, broadcast, reserved and documentation addresses are rejected
whatever the flags say.

Result convention: every ``check_*`` method is pure and returns a
``DialDecision``. Callers that prefer an exception call
``decision.raise_if_rejected()``, which raises ``DialRejected``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Union

__all__ = [
    "DEFAULT_PORTS",
    "DialDecision",
    "DialPolicy",
    "DialRejected",
    "DialTarget",
    "IPAddress",
    "split_host_port",
    "split_url",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Ports allowed when no explicit set is configured: the standard HTTP and
# HTTPS ports and every unprivileged port. Ports 1-1023 other than 80 and
# 443 belong to system services (SSH on 22, SMTP on 25, DNS on 53), which a
# hint must not be able to aim HTTP requests at.
DEFAULT_PORTS = "80, 443 and 1024-65535"
_DEFAULT_SCHEME_PORTS = {"http": 80, "https": 443}

# URLs longer than this are rejected before parsing. Mirror URLs are short;
# the bound keeps hostile input from filling log lines.
MAX_URL_LENGTH = 2048
_MAX_HOST_LENGTH = 253
_MAX_LABEL_LENGTH = 63

_SCHEME = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*):")
_LABEL = re.compile(r"\A[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z", re.ASCII)
_CANONICAL_DOTTED_QUAD = re.compile(r"\A(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}\Z", re.ASCII)
# A last label in one of these forms makes getaddrinfo, inet_aton and the
# WHATWG URL parser read the whole host as an IPv4 number ("2130706433",
# "0x7f.1", "0177.0.0.1" and "127.1" all mean 127.0.0.1).
_NUMERIC_LABEL = re.compile(r"\A(0x[0-9a-f]*|[0-9]+)\Z", re.ASCII)
_PORT = re.compile(r"\A[0-9]{1,5}\Z", re.ASCII)

# Names that only make sense on the local network: mDNS (RFC 6762), the
# home network zone (RFC 8375) and the private-use TLD ICANN reserved in
# 2024. Single-label names are resolved through search domains, so they are
# local too.
_LOCAL_NAME_SUFFIXES = (".local", ".home.arpa", ".internal")

# Cloud metadata services, rejected even when their range is allowed:
# 169.254.169.254 (AWS, GCP, Azure, OpenStack), the AWS ECS credentials
# endpoint 169.254.170.2, Alibaba Cloud's 100.100.100.200, the Azure host
# endpoint 168.63.129.16 (a public address) and AWS's IPv6 fd00:ec2::254.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text)
    for text in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "168.63.129.16", "fd00:ec2::254")
)

_NEVER = "never"
_LOOPBACK = "loopback"
_PRIVATE = "private"


@dataclass(frozen=True)
class _Range:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    code: str
    description: str
    allowed_by: str


def _ranges(rows: Iterable[tuple[str, str, str, str]]) -> tuple[_Range, ...]:
    return tuple(_Range(ipaddress.ip_network(net), code, text, flag) for net, code, text, flag in rows)


# Checked in order; the first range that contains the address decides.
# An address in none of them is public unicast and allowed.
_IPV4_RANGES = _ranges(
    [
        ("0.0.0.0/32", "unspecified", "the unspecified address, which reaches the local host on Linux", _NEVER),
        ("0.0.0.0/8", "unspecified", "in 0.0.0.0/8 ('this network')", _NEVER),
        ("127.0.0.0/8", "loopback", "a loopback address (127.0.0.0/8)", _LOOPBACK),
        ("169.254.0.0/16", "link_local", "a link-local address (169.254.0.0/16)", _NEVER),
        ("10.0.0.0/8", "private", "a private address (10.0.0.0/8)", _PRIVATE),
        ("172.16.0.0/12", "private", "a private address (172.16.0.0/12)", _PRIVATE),
        ("192.168.0.0/16", "private", "a private address (192.168.0.0/16)", _PRIVATE),
        ("100.64.0.0/10", "shared", "in the shared address space 100.64.0.0/10 (carrier-grade NAT)", _PRIVATE),
        ("192.0.0.0/24", "reserved", "in 192.0.0.0/24 (IETF protocol assignments)", _NEVER),
        ("192.0.2.0/24", "documentation", "a documentation address (192.0.2.0/24)", _NEVER),
        ("198.51.100.0/24", "documentation", "a documentation address (198.51.100.0/24)", _NEVER),
        ("203.0.113.0/24", "documentation", "a documentation address (203.0.113.0/24)", _NEVER),
        ("192.88.99.0/24", "reserved", "in 192.88.99.0/24 (deprecated 6to4 relay anycast)", _NEVER),
        ("198.18.0.0/15", "reserved", "in 198.18.0.0/15 (benchmarking)", _NEVER),
        ("224.0.0.0/4", "multicast", "a multicast address (224.0.0.0/4)", _NEVER),
        ("255.255.255.255/32", "broadcast", "the limited broadcast address", _NEVER),
        ("240.0.0.0/4", "reserved", "in the reserved range 240.0.0.0/4", _NEVER),
    ]
)

_IPV6_RANGES = _ranges(
    [
        ("::/128", "unspecified", "the unspecified address", _NEVER),
        ("::1/128", "loopback", "the loopback address", _LOOPBACK),
        ("64:ff9b:1::/48", "private", "a local-use NAT64 address (64:ff9b:1::/48)", _PRIVATE),
        ("100::/64", "reserved", "in the discard-only range 100::/64", _NEVER),
        ("2001::/32", "teredo", "a Teredo tunnel address (2001::/32)", _NEVER),
        ("2001:db8::/32", "documentation", "a documentation address (2001:db8::/32)", _NEVER),
        ("2001::/23", "reserved", "in 2001::/23 (IETF protocol assignments)", _NEVER),
        ("3fff::/20", "documentation", "a documentation address (3fff::/20)", _NEVER),
        ("fc00::/7", "private", "a unique local address (fc00::/7)", _PRIVATE),
        ("fe80::/10", "link_local", "a link-local address (fe80::/10)", _NEVER),
        ("fec0::/10", "reserved", "a deprecated site-local address (fec0::/10)", _NEVER),
        ("ff00::/8", "multicast", "a multicast address (ff00::/8)", _NEVER),
    ]
)

# Global unicast space. IPv6 addresses outside it that no row above names
# are reserved by IANA.
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


class DialRejected(Exception):
    """An address was rejected by the dial policy.

    Attributes:
        reason: why, naming the offending value.
        code: the stable rejection code, as in ``DialDecision.code``.
    """

    def __init__(self, reason: str, code: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class DialTarget:
    """The scheme, host and port of a checked URL or peer address.

    Attributes:
        scheme: ``"http"``, ``"https"``, or ``""`` for a peer address.
        host: a lowercase host name, a dotted-quad IPv4 address or a
            compressed IPv6 address without brackets.
        port: the explicit port, or the scheme's default port.
        address: the IP address when ``host`` is a literal; ``None`` for a
            name, whose resolved addresses still need ``check_resolved``.
    """

    scheme: str
    host: str
    port: int
    address: IPAddress | None

    @property
    def authority(self) -> str:
        """``host:port``, with brackets around an IPv6 host."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class DialDecision:
    """The outcome of a policy check.

    Attributes:
        allowed: whether the node may go on (for a name: resolve it).
        reason: a sentence naming the value and the rule that decided.
        code: a stable code: ``"allowed"``, or the rejection kind such as
            ``"loopback"``, ``"link_local"``, ``"metadata"``,
            ``"numeric_host"``, ``"userinfo"``, ``"scheme"`` or ``"port"``.
        target: the parsed target of an allowed URL, peer address or host.
    """

    allowed: bool
    reason: str
    code: str
    target: DialTarget | None = None

    def raise_if_rejected(self) -> DialTarget | None:
        """Return ``target`` if allowed, else raise ``DialRejected``."""
        if not self.allowed:
            raise DialRejected(self.reason, self.code)
        return self.target


def _reject(code: str, reason: str) -> DialDecision:
    return DialDecision(False, reason, code)


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``HOST:PORT`` into the host and the port number.

    An IPv6 host must be in brackets (``[::1]:9090``); the brackets are
    removed. This checks syntax only, not policy.

    Raises:
        ValueError: ``text`` is not ``HOST:PORT``, or the port is not 1-65535.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r} has an opening bracket but no closing bracket")
        host, rest = text[1:end], text[end + 1 :]
        if not host:
            raise ValueError(f"{text!r} has an empty host")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, rest = text, ""
        else:
            rest = ":" + port_text
        if not host:
            raise ValueError(f"{text!r} has an empty host")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 host in brackets, as in [::1]:9090")

    if not rest:
        if default_port is None:
            raise ValueError(f"{text!r} has no port (expected HOST:PORT)")
        return host, default_port
    if not rest.startswith(":"):
        raise ValueError(f"{text!r} has {rest!r} after the host (expected HOST:PORT)")
    port_text = rest[1:]
    if _PORT.match(port_text) is None or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def split_url(url: str) -> tuple[str, str, str, int]:
    """Split an absolute http or https URL into scheme, authority, host and port.

    The parse is stricter than RFC 3986 so that no other parser can read a
    different host from the same text: the URL must be printable ASCII
    without spaces or backslashes, and the authority must be ``host``,
    ``host:port`` or ``[ipv6]:port``. The scheme is lowercased; the host is
    returned as written, without brackets.

    Raises:
        DialRejected: with code ``"invalid"``, ``"scheme"`` or ``"userinfo"``.
    """
    if not isinstance(url, str):
        raise DialRejected(f"URL must be text, got {type(url).__name__}")
    if len(url) > MAX_URL_LENGTH:
        raise DialRejected(f"URL of {len(url)} characters is longer than {MAX_URL_LENGTH}")
    excerpt = url if len(url) <= 100 else url[:97] + "..."
    for character in url:
        if not "!" <= character <= "~" or character == "\\":
            raise DialRejected(f"URL {excerpt!r} contains {character!r}; only printable ASCII without spaces or backslashes is accepted")

    match = _SCHEME.match(url)
    if match is None:
        raise DialRejected(f"URL {excerpt!r} has no scheme")
    scheme = match.group(1).lower()
    if scheme not in _DEFAULT_SCHEME_PORTS:
        raise DialRejected(f"URL {excerpt!r} has scheme {scheme!r}; only https (and http where configured) may be dialled", "scheme")
    rest = url[match.end() :]
    if not rest.startswith("//"):
        raise DialRejected(f"URL {excerpt!r} has no '//' authority")
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    if "@" in authority:
        raise DialRejected(f"URL {excerpt!r} contains userinfo ('@' in the authority), which is never accepted", "userinfo")
    try:
        host, port = split_host_port(authority, _DEFAULT_SCHEME_PORTS[scheme])
    except ValueError as error:
        raise DialRejected(f"URL {excerpt!r}: {error}") from None
    return scheme, authority, host, port


@dataclass(frozen=True)
class DialPolicy:
    """Rules for addresses taken from untrusted input.

    Attributes:
        allow_loopback: allow 127.0.0.0/8 and ::1 (tests and local demos).
        allow_private: allow RFC 1918 ranges, 100.64.0.0/10, fc00::/7,
            local-use NAT64, single-label names and names under ``.local``,
            ``.home.arpa`` and ``.internal``.
        allow_http: allow ``http`` URLs; ``https`` is always allowed.
        allowed_ports: the only ports that may be dialled, or ``None`` for
            80, 443 and 1024-65535.
    """

    allow_loopback: bool = False
    allow_private: bool = False
    allow_http: bool = False
    allowed_ports: frozenset[int] | None = None

    def check_url(self, url: str) -> DialDecision:
        """Check a URL's scheme, userinfo, port and host."""
        try:
            scheme, _, host, port = split_url(url)
        except DialRejected as error:
            return _reject(error.code, error.reason)
        if scheme == "http" and not self.allow_http:
            return _reject(
                "scheme",
                f"URL {url!r} uses http, which is not allowed here; use https, or set allow_http_mirrors "
                "(PITH_MIRROR_ALLOW_HTTP_MIRRORS=true) for a mirror you trust",
            )
        return self._check_host_and_port(scheme, host, port)

    def check_peer(self, host_port: str) -> DialDecision:
        """Check a peer address in ``HOST:PORT`` form (IPv6 in brackets)."""
        try:
            host, port = split_host_port(host_port)
        except ValueError as error:
            return _reject("invalid", f"peer address {error}")
        return self._check_host_and_port("", host, port)

    def check_port(self, port: int) -> DialDecision:
        """Check a port number against ``allowed_ports``."""
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            return _reject("port", f"port {port!r} is not a number from 1 to 65535")
        if self.allowed_ports is not None:
            if port not in self.allowed_ports:
                listed = ", ".join(str(number) for number in sorted(self.allowed_ports))
                return _reject("port", f"port {port} is not one of the allowed ports ({listed})")
        elif 1 <= port < 1024 and port not in (80, 443):
            return _reject("port", f"port {port} is a system port; allowed ports are {DEFAULT_PORTS}")
        return DialDecision(True, f"port {port} is allowed", "allowed")

    def _check_host_and_port(self, scheme: str, host: str, port: int) -> DialDecision:
        port_decision = self.check_port(port)
        if not port_decision.allowed:
            return port_decision
        decision = self.check_host(host)
        if not decision.allowed or decision.target is None:
            return decision
        target = DialTarget(scheme, decision.target.host, port, decision.target.address)
        return DialDecision(True, decision.reason, decision.code, target)

    def check_host(self, host: str) -> DialDecision:
        """Check a host as written in a URL: a name, an IPv4 or an IPv6 literal.

        An IPv6 literal may be in brackets. For a name only the syntax is
        checked; its resolved addresses must still pass ``check_resolved``.
        The returned target has port 0 and no scheme.
        """
        if not isinstance(host, str) or not host:
            return _reject("invalid", f"host {host!r} is empty or not text")
        if len(host) > _MAX_HOST_LENGTH + 2:
            return _reject("invalid", f"host of {len(host)} characters is longer than {_MAX_HOST_LENGTH}")

        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if ":" in literal or "%" in literal:
            return self._check_ipv6_literal(host, literal)
        if literal is not host:
            return _reject("invalid", f"host {host!r} has brackets but is not an IPv6 address")
        if host.endswith("."):
            return _reject("trailing_dot", f"host {host!r} ends with a dot; write it without the trailing dot")
        if _CANONICAL_DOTTED_QUAD.match(host):
            try:
                address = ipaddress.IPv4Address(host)
            except ValueError:
                # An octet above 255; _check_name rejects it as numeric.
                return self._check_name(host)
            return self._with_target(self.check_address(address), str(address), address)
        return self._check_name(host)

    def _check_ipv6_literal(self, host: str, literal: str) -> DialDecision:
        try:
            address = ipaddress.IPv6Address(literal)
        except ValueError:
            return _reject("invalid", f"host {host!r} is not a valid IPv6 address")
        return self._with_target(self.check_address(address), str(address), address)

    def _check_name(self, host: str) -> DialDecision:
        if not host.isascii():
            return _reject("invalid", f"host {host!r} is not ASCII; write internationalized names in punycode (xn--)")
        name = host.lower()
        labels = name.split(".")
        if _NUMERIC_LABEL.match(labels[-1]):
            return _reject(
                "numeric_host",
                f"host {host!r} is a numeric IPv4 form other than a canonical dotted quad"
                " (decimal, hex, octal or short forms are resolved by getaddrinfo and are never accepted)",
            )
        for label in labels:
            if len(label) > _MAX_LABEL_LENGTH or _LABEL.match(label) is None:
                return _reject("invalid", f"host {host!r} is not a valid host name (label {label[:70]!r})")
        if name == "localhost" or name.endswith(".localhost"):
            return _reject("localhost", f"host {host!r} is a localhost name, which is never dialled")
        if len(labels) == 1 or name.endswith(_LOCAL_NAME_SUFFIXES):
            if not self.allow_private:
                return _reject("local_name", f"host {host!r} is a local network name; allow_private_addresses is off")
        decision = DialDecision(True, f"host name {name!r} has a valid form; its resolved addresses must be checked", "allowed")
        return self._with_target(decision, name, None)

    @staticmethod
    def _with_target(decision: DialDecision, host: str, address: IPAddress | None) -> DialDecision:
        if not decision.allowed:
            return decision
        return DialDecision(True, decision.reason, decision.code, DialTarget("", host, 0, address))

    def check_address(self, address: str | IPAddress) -> DialDecision:
        """Check one IP address, such as a resolved address of a name.

        Accepts an address object or its text; IPv6 text may carry a zone
        index (``fe80::1%eth0``), which is always rejected.
        """
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address)
            except ValueError:
                return _reject("invalid", f"{address[:100]!r} is not an IP address")
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            return _reject("zone_id", f"{address} has a zone index, which is only valid on the local link")
        if address in _METADATA_ADDRESSES:
            return _reject("metadata", f"{address} is a cloud metadata service address, never dialled")
        if isinstance(address, ipaddress.IPv4Address):
            decision = self._check_in_ranges(address, _IPV4_RANGES)
            return decision or DialDecision(True, f"{address} is a public unicast address", "allowed")
        return self._check_ipv6(address)

    def _check_ipv6(self, address: ipaddress.IPv6Address) -> DialDecision:
        if address in _IPV4_MAPPED:
            return _reject("ipv4_mapped", f"{address} is an IPv4-mapped address (of {address.ipv4_mapped}); use the IPv4 address itself")
        if address in _IPV4_COMPATIBLE and int(address) > 1:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
            return _reject("ipv4_compatible", f"{address} is a deprecated IPv4-compatible address (of {embedded})")
        if address in _NAT64:
            return self._check_embedded(address, ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "nat64", "NAT64")
        if address in _SIX_TO_FOUR and address.sixtofour is not None:
            return self._check_embedded(address, address.sixtofour, "6to4", "6to4")
        decision = self._check_in_ranges(address, _IPV6_RANGES)
        if decision is None and address not in _IPV6_GLOBAL_UNICAST:
            return _reject("reserved", f"{address} is outside the global unicast range 2000::/3")
        return decision or DialDecision(True, f"{address} is a public unicast address", "allowed")

    def _check_embedded(self, address: ipaddress.IPv6Address, embedded: ipaddress.IPv4Address, code: str, kind: str) -> DialDecision:
        # A translated address never reaches this host's loopback or private
        # network, so the embedded IPv4 must be public whatever the flags are.
        strict = DialPolicy()
        inner = strict.check_address(embedded)
        if not inner.allowed:
            return _reject(code, f"{address} is a {kind} address embedding {embedded}, which is rejected: {inner.reason}")
        return DialDecision(True, f"{address} is a {kind} address of the public address {embedded}", "allowed")

    def _check_in_ranges(self, address: IPAddress, ranges: tuple[_Range, ...]) -> DialDecision | None:
        """Return the decision of the first range containing ``address``, or None."""
        for entry in ranges:
            if address not in entry.network:
                continue
            if entry.allowed_by == _LOOPBACK and self.allow_loopback:
                return DialDecision(True, f"{address} is {entry.description}; allow_loopback_addresses is on", "allowed")
            if entry.allowed_by == _PRIVATE and self.allow_private:
                return DialDecision(True, f"{address} is {entry.description}; allow_private_addresses is on", "allowed")
            # The names of the configuration keys (docs/operations.md) that allow these ranges.
            setting = {
                _LOOPBACK: "; allow_loopback_addresses is off",
                _PRIVATE: "; allow_private_addresses is off",
            }.get(entry.allowed_by, ", never dialled")
            return _reject(entry.code, f"{address} is {entry.description}{setting}")
        return None

    def check_resolved(self, addresses: Iterable[str | IPAddress]) -> DialDecision:
        """Check every address a name resolved to; one rejected address rejects all.

        Rejecting the whole name, rather than dropping the bad addresses,
        stops a name that mixes a public address with 127.0.0.1 from being
        used at all.
        """
        count = 0
        for address in addresses:
            count += 1
            decision = self.check_address(address)
            if not decision.allowed:
                return _reject(decision.code, f"resolved address {decision.reason}")
        if count == 0:
            return _reject("no_addresses", "the name resolved to no addresses")
        return DialDecision(True, f"all {count} resolved addresses are allowed", "allowed")
