"""The dial policy against the C18 vectors and the ranges ipaddress misclassifies."""

from __future__ import annotations

from typing import Any

import pytest

from node import dialpolicy
from node.dialpolicy import DialPolicy, DialRejected, split_host_port, split_url
from conftest import load_case

C18_VECTORS: list[dict[str, Any]] = load_case("C18")["vectors"]

# Words in a vector's "expect" text, and the rejection codes that match them.
# A vector whose text names none of these words (such as plain "reject") is
# only checked for being rejected.
EXPECT_KEYWORD_CODES = {
    "trailing dot": {"trailing_dot"},
    "link-local": {"link_local", "metadata"},
    "metadata": {"metadata"},
    "loopback": {"loopback"},
    "private": {"private"},
    "shared": {"shared", "metadata"},
    "multicast": {"multicast"},
    "ipv4-mapped": {"ipv4_mapped"},
    "ipv4-compatible": {"ipv4_compatible"},
    "nat64": {"nat64"},
    "6to4": {"6to4"},
    "decimal form": {"numeric_host"},
    "hex short form": {"numeric_host"},
    "octal form": {"numeric_host"},
    "short form": {"numeric_host"},
    "resolves to": {"numeric_host"},
    "userinfo": {"userinfo"},
    "scheme": {"scheme"},
    "port": {"port"},
}

# http is allowed here so that each vector is rejected for its own reason,
# not for its scheme.
STRICT = DialPolicy(allow_http=True)
EVERY_FLAG = DialPolicy(allow_loopback=True, allow_private=True, allow_http=True)


def vector_id(vector: dict[str, Any]) -> str:
    return vector.get("host") or vector["url"]


def vector_url(vector: dict[str, Any]) -> str:
    if "host" in vector:
        return f"http://{vector['host']}:8080/bundles/"
    return vector["url"]


def expected_codes(vector: dict[str, Any]) -> set[str]:
    """Return the codes the vector's expect text allows; empty when it names none."""
    text = vector["expect"].lower()
    parenthetical = text[text.find("(") :] if "(" in text else text
    codes: set[str] = set()
    for keyword, matching in EXPECT_KEYWORD_CODES.items():
        if keyword in parenthetical:
            codes |= matching
    return codes


@pytest.mark.parametrize("vector", C18_VECTORS, ids=vector_id)
def test_c18_url_rejected(vector: dict[str, Any]) -> None:
    decision = STRICT.check_url(vector_url(vector))

    assert decision.allowed is False
    assert decision.target is None
    assert decision.reason
    codes = expected_codes(vector)
    if codes:
        assert decision.code in codes, decision.reason


@pytest.mark.parametrize("vector", [v for v in C18_VECTORS if "host" in v], ids=vector_id)
def test_c18_host_rejected(vector: dict[str, Any]) -> None:
    decision = STRICT.check_host(vector["host"])

    assert decision.allowed is False
    assert decision.code == STRICT.check_url(vector_url(vector)).code


@pytest.mark.parametrize("vector", C18_VECTORS, ids=vector_id)
def test_c18_flags_unlock_only_their_ranges(vector: dict[str, Any]) -> None:
    strict_code = STRICT.check_url(vector_url(vector)).code
    decision = EVERY_FLAG.check_url(vector_url(vector))

    assert decision.allowed is (strict_code in {"loopback", "private"})


def test_c18_has_every_vector_kind() -> None:
    hosts = [v for v in C18_VECTORS if "host" in v]
    urls = [v for v in C18_VECTORS if "url" in v]

    assert len(hosts) == 25
    assert len(urls) == 3


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "127.8.9.10"])
def test_loopback_allowed_with_flag(host: str) -> None:
    decision = DialPolicy(allow_loopback=True).check_host(host)

    assert decision.allowed is True
    assert decision.target is not None
    assert decision.target.address is not None


@pytest.mark.parametrize(
    "host",
    ["169.254.169.254", "[::ffff:169.254.169.254]", "[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]", "localhost", "0.0.0.0"],
)
def test_loopback_flag_keeps_others_rejected(host: str) -> None:
    decision = DialPolicy(allow_loopback=True, allow_private=True).check_host(host)

    assert decision.allowed is False


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("https://93.184.216.34/", "93.184.216.34", 443),
        ("https://[2606:4700::1]:8443/pith/", "2606:4700::1", 8443),
        ("https://[64:ff9b::5db8:d822]/", "64:ff9b::5db8:d822", 443),
    ],
)
def test_public_address_allowed(url: str, host: str, port: int) -> None:
    decision = DialPolicy().check_url(url)

    assert decision.allowed is True
    assert decision.target is not None
    assert decision.target.scheme == "https"
    assert decision.target.host == host
    assert decision.target.port == port
    assert str(decision.target.address) == host


def test_name_needs_resolution() -> None:
    decision = DialPolicy().check_url("HTTPS://Mirror.Example.ORG/pith/")

    assert decision.allowed is True
    assert decision.target is not None
    assert decision.target.host == "mirror.example.org"
    assert decision.target.port == 443
    assert decision.target.address is None
    assert decision.target.authority == "mirror.example.org:443"


def test_ipv6_target_authority_bracketed() -> None:
    decision = DialPolicy().check_url("https://[2606:4700::1]/")

    assert decision.target is not None
    assert decision.target.authority == "[2606:4700::1]:443"


@pytest.mark.parametrize(
    ("addresses", "code"),
    [
        (["127.0.0.1"], "loopback"),
        (["93.184.216.34", "127.0.0.1"], "loopback"),
        (["2606:4700::1", "::ffff:a9fe:a9fe"], "ipv4_mapped"),
        (["fe80::1%eth0"], "zone_id"),
        (["169.254.169.254"], "metadata"),
        (["not-an-address"], "invalid"),
        ([], "no_addresses"),
    ],
)
def test_resolved_addresses_rejected(addresses: list[str], code: str) -> None:
    decision = DialPolicy().check_resolved(addresses)

    assert decision.allowed is False
    assert decision.code == code


def test_resolved_public_addresses_allowed() -> None:
    decision = DialPolicy().check_resolved(["93.184.216.34", "2606:4700::1"])

    assert decision.allowed is True
    assert decision.reason == "all 2 resolved addresses are allowed"


def test_resolved_loopback_allowed_with_flag() -> None:
    decision = DialPolicy(allow_loopback=True).check_resolved(["127.0.0.1", "::1"])

    assert decision.allowed is True


@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("0.1.2.3", "unspecified"),
        ("169.254.170.2", "metadata"),
        ("168.63.129.16", "metadata"),
        ("192.0.0.8", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.18.0.1", "reserved"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("::", "unspecified"),
        ("::2", "ipv4_compatible"),
        ("100::1", "reserved"),
        ("2001::1", "teredo"),
        ("2001:db8::1", "documentation"),
        ("2001:2::1", "reserved"),
        ("3fff::1", "documentation"),
        ("fd00:ec2::254", "metadata"),
        ("fec0::1", "reserved"),
        ("ff02::1", "multicast"),
        ("5f00::1", "reserved"),
        ("64:ff9b::a00:5", "nat64"),
        ("2002:7f00:1::", "6to4"),
    ],
)
def test_special_address_rejected(address: str, code: str) -> None:
    decision = EVERY_FLAG.check_address(address)

    assert decision.allowed is False
    assert decision.code == code


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("100.64.0.1", True), ("10.1.2.3", True), ("fd12:3456::1", True), ("64:ff9b:1::1", True), ("100.100.100.200", False)],
)
def test_private_flag_ranges(address: str, allowed: bool) -> None:
    assert DialPolicy(allow_private=True).check_address(address).allowed is allowed
    assert DialPolicy().check_address(address).allowed is False


@pytest.mark.parametrize(
    ("host", "code"),
    [
        ("LOCALHOST", "localhost"),
        ("mirror.localhost", "localhost"),
        ("Localhost.", "trailing_dot"),
        ("mirror.example.org.", "trailing_dot"),
        ("0x7f000001", "numeric_host"),
        ("01.2.3.4", "numeric_host"),
        ("1.2.3.4.5", "numeric_host"),
        ("256.1.1.1", "numeric_host"),
        ("example.0x1", "numeric_host"),
        ("intranet", "local_name"),
        ("printer.local", "local_name"),
        ("metadata.google.internal", "local_name"),
        ("bad_label.example.org", "invalid"),
        ("-lead.example.org", "invalid"),
        ("a..b", "invalid"),
        ("mirror.exämple.org", "invalid"),
        ("[127.0.0.1]", "invalid"),
        ("[fe80::1%25eth0]", "zone_id"),
        ("", "invalid"),
    ],
)
def test_host_syntax_rejected(host: str, code: str) -> None:
    decision = DialPolicy().check_host(host)

    assert decision.allowed is False
    assert decision.code == code


@pytest.mark.parametrize("host", ["127.0.0.1.nip.example", "cafe.face", "0x7f.example.org", "xn--mnchen-3ya.example"])
def test_host_names_pass_syntax(host: str) -> None:
    decision = DialPolicy().check_host(host)

    assert decision.allowed is True
    assert decision.target is not None
    assert decision.target.address is None


def test_shared_space_code() -> None:
    assert DialPolicy().check_address("100.64.0.1").code == "shared"


def test_local_names_allowed_with_private() -> None:
    assert DialPolicy(allow_private=True).check_host("intranet").allowed is True


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://93.184.216.34/", "scheme"),
        ("ftp://93.184.216.34/", "scheme"),
        ("https://user:secret@93.184.216.34/", "userinfo"),
        ("https://@93.184.216.34/", "userinfo"),
        ("https://mirror.example.org\\@127.0.0.1/", "invalid"),
        ("https://mirror.example.org /", "invalid"),
        ("https://mirror.example.org\t/", "invalid"),
        ("https://[::1/", "invalid"),
        ("https://mirror.example.org:/", "invalid"),
        ("https://mirror.example.org:0/", "invalid"),
        ("https://mirror.example.org:65536/", "invalid"),
        ("https://mirror.example.org:25/", "port"),
        ("https:mirror.example.org/", "invalid"),
        ("//mirror.example.org/", "invalid"),
        ("https://" + "a" * 2100 + ".org/", "invalid"),
    ],
)
def test_url_rejected(url: str, code: str) -> None:
    decision = DialPolicy().check_url(url)

    assert decision.allowed is False
    assert decision.code == code


@pytest.mark.parametrize(("port", "allowed"), [(80, True), (443, True), (1024, True), (8080, True), (22, False), (1023, False)])
def test_default_ports(port: int, allowed: bool) -> None:
    assert DialPolicy().check_port(port).allowed is allowed


def test_configured_ports_only() -> None:
    policy = DialPolicy(allowed_ports=frozenset({443, 8443}))

    assert policy.check_url("https://93.184.216.34:8443/").allowed is True
    assert policy.check_url("https://93.184.216.34:8080/").code == "port"
    assert policy.check_url("https://93.184.216.34/").allowed is True


@pytest.mark.parametrize(
    ("text", "code", "allowed"),
    [
        ("[2606:4700::1]:9090", "allowed", True),
        ("93.184.216.34:9090", "allowed", True),
        ("10.0.0.5:9090", "private", False),
        ("[::1]:9090", "loopback", False),
        ("mirror.example.org", "invalid", False),
        ("mirror.example.org:22", "port", False),
    ],
)
def test_peer_addresses(text: str, code: str, allowed: bool) -> None:
    decision = DialPolicy().check_peer(text)

    assert decision.code == code
    assert decision.allowed is allowed


def test_peer_target_has_no_scheme() -> None:
    decision = DialPolicy().check_peer("[2606:4700::1]:9090")

    assert decision.target is not None
    assert decision.target.scheme == ""
    assert decision.target.authority == "[2606:4700::1]:9090"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("[::1]:9090", ("::1", 9090)), ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("mirror.example.org:443", ("mirror.example.org", 443))],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["::1:9090", "host:0", "host:65536", "host:", ":80", "[::1]9090", "[::1", "[]:80", "[abc]:80", "host:+80", ""])
def test_split_host_port_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text)


def test_split_url_default_port() -> None:
    assert split_url("HTTPS://mirror.example.org/pith/") == ("https", "mirror.example.org", "mirror.example.org", 443)


def test_raise_if_rejected() -> None:
    decision = DialPolicy().check_host("169.254.169.254")

    with pytest.raises(DialRejected) as caught:
        decision.raise_if_rejected()
    assert caught.value.code == "metadata"
    assert caught.value.reason == "169.254.169.254 is a cloud metadata service address, never dialled"


def test_raise_if_rejected_returns_target() -> None:
    target = DialPolicy().check_url("https://mirror.example.org:8443/").raise_if_rejected()

    assert target is not None
    assert target.authority == "mirror.example.org:8443"


def test_public_names_pinned() -> None:
    expected = ["DEFAULT_PORTS", "DialDecision", "DialPolicy", "DialRejected", "DialTarget", "IPAddress", "split_host_port", "split_url"]

    assert sorted(dialpolicy.__all__) == expected
