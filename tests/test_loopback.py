"""One loopback-host check for the base URL, the simulator's bind address and its redirects."""

from __future__ import annotations

import re

import pytest

from batchpoll._cli.main import main
from batchpoll._core.loopback import is_loopback_host
from batchpoll.simulator import SimSettings
from batchpoll.simulator.server import bind_host


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LocalHost",
        "127.0.0.1",
        "127.0.0.2",
        "127.255.255.254",
        "127.1.2.3",
        "::1",
        "[::1]",
        "0:0:0:0:0:0:0:1",
        "[0:0:0:0:0:0:0:1]",
    ],
)
def test_loopback_hosts_are_loopback(host: str) -> None:
    """localhost (any case), all of 127.0.0.0/8 and ::1 (bare or bracketed) are loopback."""
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "0.0.0.0",
        "::",
        "[::]",
        "126.255.255.255",
        "128.0.0.1",
        "10.0.0.1",
        "192.168.1.1",
        "::2",
        "[127.0.0.1]",
        "[::1",
        "::1]",
        "[[::1]]",
        "example.com",
        "localhost.example.com",
        "notlocalhost",
        "127.0.0.1.nip.io",
        " 127.0.0.1",
        "127.0.0.1:8080",
    ],
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    """Other addresses, any name but localhost, malformed brackets and host:port are not."""
    assert not is_loopback_host(host)


# (host as given to bind, the same host inside a URL, loopback?)
SITES = [
    ("127.0.0.2", "127.0.0.2", True),
    ("localhost", "localhost", True),
    ("::1", "[::1]", True),
    ("10.0.0.1", "10.0.0.1", False),
    ("::", "[::]", False),
    ("example.com", "example.com", False),
]


@pytest.mark.parametrize(("host", "in_url", "loopback"), SITES, ids=[s[0] for s in SITES])
def test_every_call_site_agrees_with_the_check(
    host: str, in_url: str, loopback: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """The base URL's http check, the simulator's redirect_url and its bind host agree."""
    url = f"http://{in_url}:8080"
    assert is_loopback_host(host) is loopback
    assert main(["config", "--base-url", url]) == (0 if loopback else 2)
    refused = (
        f"batchpoll: error: base_url='{url}' (from flag --base-url): plain http:// would send"
        " the API key in clear text: use https://, or pass --allow-insecure-http\n"
    )
    assert capsys.readouterr().err == ("" if loopback else refused)
    if loopback:
        assert SimSettings(redirect_url=url).redirect_url == url
        assert bind_host(host) == ("127.0.0.1" if host == "localhost" else host)
        return
    with pytest.raises(ValueError, match=r"^redirect_url must be an http:// URL on loopback, not "):
        SimSettings(redirect_url=url)
    message = f"the simulator binds loopback only (127.0.0.1 or ::1), not {host!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        bind_host(host)


def test_the_simulator_binds_a_bracketed_ipv6_loopback_bare() -> None:
    """A bind host of "[::1]" is loopback and binds as "::1"."""
    assert bind_host("[::1]") == "::1"
