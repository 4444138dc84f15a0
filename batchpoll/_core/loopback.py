"""The one test of "is this host this machine's loopback", for every check that needs it.

Plain ``http://`` may carry the API key only to loopback, and the simulator binds and redirects
to loopback only; all three ask :func:`is_loopback_host`.
"""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """Whether *host* names this machine's loopback: ``localhost``, 127.0.0.0/8 or ``::1``.

    *host* is a name or an address as a URL's host part or a bind address gives it: IPv6 bare
    (``::1``) or in brackets (``[::1]``). Host names compare without case (RFC 4343); any other
    name is not loopback, since only a resolver could say where it points.
    """
    if host.lower() == "localhost":
        return True
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return False
    # Brackets hold IPv6 only (RFC 3986 IP-literal): "[127.0.0.1]" is no address.
    return address.is_loopback and (address.version == 6 or not bracketed)
