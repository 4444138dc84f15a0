"""``batchpoll simulate``: the simulator's command-line knobs, and serving until a signal."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import anyio

from .._core.config import shown
from .server import bind_host, running_simulator
from .settings import DEFAULT_SETTINGS, RETRY_FORM, SimSettings


async def _serve_until_signal(settings: SimSettings, host: str, port: int) -> None:
    # Listen for signals before binding, so one sent right after the banner is not lost.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with running_simulator(settings, host=host, port=port) as sim:
            print(f"simulator listening on {sim.url}", file=sys.stderr, flush=True)
            async for _ in signals:
                break


def serve(settings: SimSettings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until SIGINT or SIGTERM, then return; ValueError for a non-loopback *host*."""
    anyio.run(_serve_until_signal, settings, bind_host(host), port)


def add_knobs(parser: argparse.ArgumentParser) -> None:
    """The ``batchpoll simulate`` options that set ``SimSettings``."""
    d = DEFAULT_SETTINGS
    parser.add_argument("--seed", type=int, default=d.seed, help="fixes every id's fate")
    parser.add_argument(
        "--api-key-file", metavar="PATH", help="answer 401 unless requests carry this key"
    )
    parser.add_argument(
        "--unauthorized-after",
        type=int,
        default=None,
        metavar="N",
        help="answer 401 to every request after the first N (a key revoked mid-run)",
    )
    parser.add_argument("--min-polls", type=int, default=d.min_polls, metavar="K")
    parser.add_argument("--max-polls", type=int, default=d.max_polls, metavar="K")
    parser.add_argument("--pending", action="store_true", help="every id stays in progress")
    parser.add_argument("--latency", type=float, default=d.latency, metavar="S")
    parser.add_argument("--rate-limit", type=float, default=None, metavar="R", help="429 above R/s")
    parser.add_argument("--rate-burst", type=int, default=d.rate_burst, metavar="B")
    parser.add_argument(
        "--retry-after",
        default=d.retry_after,
        metavar="FORMS",
        help="Retry-After of 429s, one picked per 429 from a comma list of delta-seconds, "
        "'date' and 'none' (e.g. 1,date,none)",
    )
    parser.add_argument("--no-retry-after", action="store_true", help="429s without Retry-After")
    for kind, what in (
        ("error", "500/502/503"),
        ("drop", "connection aborted without a response"),
        ("truncate", "200 cut short of its Content-Length"),
        ("slow", "200 stalling --slow-body-s halfway through its body"),
        ("garbage", "200 with an unusable body"),
        ("throttle", "429 regardless of --rate-limit"),
    ):
        parser.add_argument(
            f"--{kind}-rate",
            type=float,
            default=0.0,
            metavar="F",
            help=f"fraction of requests answered with a fault: {what}",
        )
    parser.add_argument("--slow-body-s", type=float, default=d.slow_body_s, metavar="S")
    parser.add_argument(
        "--redirect-url",
        default=None,
        metavar="URL",
        help="loopback http base URL that redirect- ids are sent to with a 302",
    )


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    """``SimSettings`` from ``add_knobs``' options; ValueError for values that cannot work."""
    key = None
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text().strip()
        except OSError as exc:
            name = shown(args.api_key_file)
            raise ValueError(f"--api-key-file {name}: cannot read: {exc.strerror}") from None
    # --no-retry-after wins over --retry-after; "none" is the form for "no header".
    forms = ("none",) if args.no_retry_after else tuple(args.retry_after.split(","))
    if bad := [form for form in forms if not RETRY_FORM.fullmatch(form)]:
        # Checked here too, to name the bad forms as shown: a long list is only counted.
        raise ValueError(
            f"--retry-after: forms are delta-seconds, 'date' or 'none'; not {shown(bad)}"
        )
    return SimSettings(
        seed=args.seed,
        api_key=key,
        unauthorized_after=args.unauthorized_after,
        min_polls=args.min_polls,
        max_polls=args.max_polls,
        pending=args.pending,
        latency=args.latency,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        retry_after_forms=forms,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate,
        slow_rate=args.slow_rate,
        slow_body_s=args.slow_body_s,
        garbage_rate=args.garbage_rate,
        throttle_rate=args.throttle_rate,
        redirect_url=args.redirect_url,
    )
