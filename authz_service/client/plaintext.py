"""Is a gRPC address on this machine? Keys sent without TLS must not cross a network.

Every request carries the API key, so a plaintext channel to another host hands
the key to anyone on the path. The SDK, the CLI and the connectors warn once per
connection when that is about to happen; loopback (127.0.0.0/8, ::1, ``localhost``)
and unix sockets never leave the machine.
"""

from __future__ import annotations

import ipaddress

_UNIX = ("unix:", "unix-abstract:")
_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def is_loopback(address: str) -> bool:
    """True if every host ``address`` names is loopback or a unix socket.

    ``address`` is a gRPC target: ``host:port``, ``[v6]:port``, ``unix:/path``,
    ``dns:[//authority/]host:port``, ``ipv4:a:port,b:port`` or ``ipv6:[a]:port``.
    Anything not understood counts as remote (the warning errs on the safe side).
    """
    target = address.strip()
    if target.startswith(_UNIX):
        return True
    for scheme in _SCHEMES:
        if target.startswith(scheme):
            target = target.removeprefix(scheme)
            if target.startswith("//"):  # dns://authority/host:port
                target = target[2:].partition("/")[2]
            break
    hosts = [_host(part) for part in target.split(",")]
    return bool(hosts) and all(loopback_host(h) for h in hosts)


def _host(hostport: str) -> str:
    hostport = hostport.strip()
    if hostport.startswith("["):
        return hostport[1:].partition("]")[0]
    if hostport.count(":") == 1:
        return hostport.partition(":")[0]
    return hostport  # no port, or a bare IPv6 address


def loopback_host(host: str) -> bool:
    """A host name or IP literal (no port, no brackets) that stays on this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_warning(address: str) -> str:
    """The one sentence every client says before sending a key in the clear."""
    return (
        f"sending the API key without TLS to {address}, which is not a loopback address: "
        "anyone on the network path can read it (set AUTHZ_TLS=1, see docs/configuration.md)"
    )
