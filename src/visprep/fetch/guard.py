"""Address guard against server-side request forgery: resolve a host and refuse non-public addresses.

The caller connects to one of the addresses this module checked (see `http.py`), so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot slip a private address through.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DNS_CACHE_TTL_S = 30.0
"""How long `CheckedResolver` reuses a host's checked answer before asking the resolver again."""
_DNS_CACHE_MAX_HOSTS = 10_000  # past this many cached hosts, expired answers are dropped (all, if none expired)

_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # CGNAT; some clouds put metadata services here
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddressError(Exception):
    """The host resolved to an address the settings do not allow."""


class ResolutionError(Exception):
    """The host name could not be resolved.

    Attributes:
        transient: True when the resolver said "try again" (EAI_AGAIN), so a retry may succeed.
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class AddressPolicy:
    """Which address classes are allowed besides public ones.

    Link-local (cloud metadata at 169.254.169.254), multicast, reserved and unspecified addresses are refused
    always: no switch turns them on.
    """

    allow_private: bool = False
    allow_loopback: bool = False

    def refusal(self, address: IPAddress) -> str | None:
        """Return why `address` is refused (e.g. "link-local"), or None if it is allowed."""
        for embedded in _embedded_ipv4(address):
            why = self.refusal(embedded)
            if why is not None:
                return f"{why} (embedded in {address})"
        if address.is_unspecified:
            return "unspecified"
        if address.is_loopback:
            return None if self.allow_loopback else "loopback"
        if address.is_link_local:
            return "link-local"
        if address.is_multicast:
            return "multicast"
        if address.is_reserved:
            return "reserved"
        if address.is_private or (address.version == 4 and address in _SHARED_ADDRESS_SPACE):
            return None if self.allow_private else "private"
        if not address.is_global:
            return None if self.allow_private else "non-global"
        return None


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64), which reach that IPv4 host."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64_WELL_KNOWN:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def parse_ip_literal(host: str) -> IPAddress | None:
    """Return `host` as an IP address if it is a literal ("10.0.0.1", "::1", "[::1]"), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def resolve_checked(host: str, port: int, policy: AddressPolicy) -> list[IPAddress]:
    """Resolve `host` and return its addresses, all of them allowed by `policy`, in resolver order.

    Raises:
        BlockedAddressError: if ANY resolved address is refused (a host with one public and one private address
            is refused: the connection could land on either).
        ResolutionError: if the name does not resolve.
    """
    literal = parse_ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            transient = exc.errno == socket.EAI_AGAIN
            raise ResolutionError(f"cannot resolve host {host!r}: {exc.strerror}", transient=transient) from exc
        except UnicodeError as exc:
            raise ResolutionError(f"cannot resolve host {host!r}: {exc}", transient=False) from exc
        addresses = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise ResolutionError(f"host {host!r} resolved to no address", transient=False)
    for address in addresses:
        why = policy.refusal(address)
        if why is not None:
            raise BlockedAddressError(f"host {host!r} resolves to {why} address {address}")
    return addresses


class CheckedResolver:
    """`resolve_checked` with each allowed answer kept for `ttl_s` seconds, per (host, port).

    Without it every request (and every redirect hop) asks the system resolver again, which without a local DNS
    cache is a network round trip per image, and re-runs the address checks. Only answers that passed the policy
    are kept, and the connection still goes to one of those checked addresses, so reusing an answer opens no DNS
    rebinding window; a host whose DNS changes is followed after at most `ttl_s`. Failures (unresolvable,
    blocked) are not kept: the next attempt asks again. Thread-safe (one dict read or write per call).
    """

    def __init__(self, policy: AddressPolicy, *, ttl_s: float = DNS_CACHE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._ttl_s = ttl_s
        self._clock = clock
        self._answers: dict[tuple[str, int], tuple[float, tuple[IPAddress, ...]]] = {}

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The checked addresses of `host`, from the cache while fresh; raises as `resolve_checked` does."""
        key = (host.lower(), port)
        now = self._clock()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            return list(cached[1])
        addresses = resolve_checked(host, port, self.policy)
        if len(self._answers) >= _DNS_CACHE_MAX_HOSTS:
            self._prune(now)
        self._answers[key] = (now + self._ttl_s, tuple(addresses))
        return addresses

    def _prune(self, now: float) -> None:
        fresh = {k: v for k, v in list(self._answers.items()) if v[0] > now}
        self._answers = fresh if len(fresh) < _DNS_CACHE_MAX_HOSTS else {}
