"""Address guard: which addresses are refused, and that any bad address in a DNS answer refuses the host."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from visprep.fetch import AddressPolicy
from visprep.fetch.guard import BlockedAddressError, CheckedResolver, ResolutionError, resolve_checked

STRICT = AddressPolicy()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ],
)
def test_refused_addresses(address: str, why: str) -> None:
    refusal = STRICT.refusal(ipaddress.ip_address(address))
    assert refusal is not None and refusal.startswith(why)


@pytest.mark.parametrize("address", ["8.8.8.8", "151.101.1.69", "2606:4700::6810:84e5"])
def test_public_addresses_allowed(address: str) -> None:
    assert STRICT.refusal(ipaddress.ip_address(address)) is None


def test_switches_are_separate() -> None:
    private_only = AddressPolicy(allow_private=True)
    assert private_only.refusal(ipaddress.ip_address("10.1.2.3")) is None
    assert private_only.refusal(ipaddress.ip_address("127.0.0.1")) == "loopback"
    assert private_only.refusal(ipaddress.ip_address("169.254.169.254")) == "link-local"
    loopback_only = AddressPolicy(allow_loopback=True)
    assert loopback_only.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert loopback_only.refusal(ipaddress.ip_address("10.1.2.3")) == "private"


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> None:
    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_any_bad_address_in_answer_refuses_host(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, ["93.184.216.34", "10.0.0.7"])
    with pytest.raises(BlockedAddressError, match="10.0.0.7"):
        resolve_checked("mixed.example", 80, STRICT)


def test_public_answer_is_returned_deduplicated(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, ["93.184.216.34", "93.184.216.34", "2606:2800:220:1::1"])
    assert [str(a) for a in resolve_checked("ok.example", 80, STRICT)] == ["93.184.216.34", "2606:2800:220:1::1"]


def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(*args: object, **kwargs: object) -> list[tuple]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ResolutionError) as info:
        resolve_checked("nope.invalid", 80, STRICT)
    assert not info.value.transient and "nope.invalid" in str(info.value)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _counting_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_checked_resolver_reuses_an_answer_until_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _counting_dns(monkeypatch, {"cdn.example": ["93.184.216.34"]})
    clock = _Clock()
    resolver = CheckedResolver(STRICT, ttl_s=30.0, clock=clock)
    assert [str(a) for a in resolver.resolve("cdn.example", 443)] == ["93.184.216.34"]
    clock.now += 29.0
    assert [str(a) for a in resolver.resolve("CDN.example", 443)] == ["93.184.216.34"]
    assert asked == ["cdn.example"]  # the second call (any case) came from the cache
    resolver.resolve("cdn.example", 80)
    assert asked == ["cdn.example", "cdn.example"]  # the port is part of the key
    clock.now += 1.0  # expired: asked again, and a changed answer is followed
    _counting_dns(monkeypatch, {"cdn.example": ["93.184.216.35"]})
    assert [str(a) for a in resolver.resolve("cdn.example", 443)] == ["93.184.216.35"]


def test_checked_resolver_keeps_no_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _counting_dns(monkeypatch, {"inside.example": ["10.0.0.7"]})
    resolver = CheckedResolver(STRICT, clock=_Clock())
    for _ in range(2):
        with pytest.raises(BlockedAddressError, match="10.0.0.7"):
            resolver.resolve("inside.example", 80)
        with pytest.raises(ResolutionError):
            resolver.resolve("nope.invalid", 80)
    assert asked == ["inside.example", "nope.invalid"] * 2
