"""results.md: one table per workload, the targets, how it was measured."""

from __future__ import annotations

from typing import Any

from clients import CLIENTS
from figures import Row, per_id, targets


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(med: dict[tuple[str, str], Row], names: list[str], meta: dict[str, Any]) -> list[str]:
    args, mach, cores = meta["args"], meta["machine"], meta.get("cores", {})
    md = [
        "# batchpoll side by side (issue #5)",
        "",
        f"Run on {meta['date']} with `{meta['command']}` ({meta['elapsed_s'] / 60:.1f} min).",
        "Regenerate with `make bench`; `make bench-smoke` runs the same code at tiny sizes.",
        "",
        *(
            ["**Smoke sizes (--quick): these figures say nothing about speed.**", ""]
            if meta.get("quick")
            else []
        ),
        "## Machine",
        "",
        f"- {mach['nproc']} CPUs ({mach['cpu']}), {mach['memory']} RAM; {mach['os']}; "
        f"Python {mach['python']}",
        f"- server pinned to core {cores.get('server')}, every client to core {cores.get('client')}"
        if cores.get("client") is not None
        else "- not pinned: fewer than 2 cores available",
        '- "other load" in the tables is the machine\'s busy CPU during a run that was neither '
        "the server, the client nor the harness (% of one core): anything above a few % means "
        "something else was running and the figures are noisy.",
        "",
        "## Targets",
        "",
        *_table(["target", "batchpoll", "verdict"], [list(t) for t in targets(med, meta)]),
        "",
    ]
    md += section_a(med, names, args) + section_b(med, names, args) + section_c(med, names, args)
    md += section_d(meta) + section_server(med, meta) + how(args, meta)
    return md


def section_a(med: dict[tuple[str, str], Row], names: list[str], args: dict[str, Any]) -> list[str]:
    bp, rows = med.get(("a", "batchpoll")), []
    for c in names:
        m = med.get(("a", c))
        if not m:
            continue
        rows.append(
            [
                c,
                CLIENTS[c].loop,
                f"{m['ids']:,}",
                f"{m['polls_s']:,.0f}",
                f"{m['cpu_1k']:.3f}",
                f"{m['rss_kb'] / 1024:.1f}",
                f"{m['wall_s']:.1f}",
                _ratio(bp and bp["polls_s"], m["polls_s"]),
                _ratio(bp and bp["cpu_1k"], m["cpu_1k"]),
                "yes" if m["finished_all"] else "**NO**",
                f"{m['server_cpu_pct']:.0f}",
                f"{m['foreign_cpu_pct']:.0f}",
            ]
        )
    if not rows:
        return []
    return [
        f"## (a) Throughput: {args['a_ids']:,} ids x {args['a_polls']} polls, "
        f"interval {args['interval']} s, concurrency {args['concurrency']}, no rate limit",
        "",
        f"Medians of {args['rounds']} interleaved rounds. batchpoll ran with "
        "`--rate 1000000 --burst 1000`.",
        "",
        *_table(
            [
                "client",
                "loop",
                "ids",
                "polls/s",
                "CPU s / 1k polls",
                "peak RSS MiB",
                "wall s",
                "batchpoll polls/s ÷ this",
                "batchpoll CPU ÷ this",
                "every id finished",
                "server CPU %",
                "other load %",
            ],
            rows,
        ),
        "",
    ]


def section_b(med: dict[tuple[str, str], Row], names: list[str], args: dict[str, Any]) -> list[str]:
    rows = []
    for c in names:
        m = med.get(("b", c))
        if not m:
            continue
        rows.append(
            [
                c,
                f"{m['busy_rate']:,.1f}" if m["busy_rate"] else "-",
                f"{m['max_1s'] or 0:,}",
                f"{m['wall_s']:.1f}",
                f"{m['cpu_1k']:.3f}",
                "yes" if m["finished_all"] else "**NO**",
                f"{m['foreign_cpu_pct']:.0f}",
            ]
        )
    if not rows:
        return []
    return [
        f"## (b) Rate: the same ids at {args['b_rate']:,.0f}/s, burst {args['b_burst']}",
        "",
        f"{args['b_rounds']} round(s), run in the first round(s) of (a): each run spans tens "
        "of seconds, thousands of 1-s windows. "
        "Counted at the server: the achieved rate over the busy span (first to last request) "
        "and the most requests in any 1-s window (worst round). The naive scripts have no rate "
        "limit and are not run; aiometer's `max_per_second` has no burst. A window is timed "
        "where requests arrive, so the sender's timer lateness and the server's own scheduling "
        "count against it: the ceiling's row (a plain GCRA at exactly the rate, booked by the "
        "sender) shows how much that adds on this machine. batchpoll paces 1% under the rate "
        "to leave room for it.",
        "",
        *_table(
            [
                "client",
                "achieved rate /s",
                "worst 1-s window",
                "wall s",
                "CPU s / 1k polls",
                "every id finished",
                "other load %",
            ],
            rows,
        ),
        "",
    ]


def section_c(med: dict[tuple[str, str], Row], names: list[str], args: dict[str, Any]) -> list[str]:
    rows = []
    for size in (int(s) for s in str(args["c_sizes"]).split(",") if s):
        bp = per_id(med, size, "batchpoll")
        for c in names:
            m, base = med.get((f"c{size}", c)), med.get(("c1", c))
            if not m or not base:
                continue
            b = per_id(med, size, c)
            rows.append(
                [
                    c,
                    f"{size:,}",
                    f"{m['polled']:,}",
                    f"{m['wall_s']:.0f}",
                    f"{m['rss_kb'] / 1024:.1f}",
                    f"{base['rss_kb'] / 1024:.1f}",
                    f"{b * size / m['polled']:,.0f}"
                    if CLIENTS[c].streams and 0 < m["polled"] < size
                    else "-",
                    f"{b:,.0f}",
                    _ratio(bp, b),
                    f"{m['server_cpu_pct']:.0f}",
                ]
            )
    if not rows:
        return []
    return [
        f"## (c) Memory: ids all waiting at once (always in progress, interval "
        f"{args['c_interval']} s)",
        "",
        f"Each client runs at least {args['c_window']:.0f} s and on until every id has been "
        f"polled once, but no longer than {args['c_cap']:.0f} s; then the harness sends it "
        "SIGTERM (every client ends the same way; batchpoll's `--deadline` is only a backstop). "
        "bytes per waiting id = (peak RSS - the same client's peak RSS with 1 id) / ids. "
        "The naive scripts, aiometer and the ceiling hold every id from the start. batchpoll "
        "reads its input as it goes, so an id counts as waiting for sure only once it has been "
        "polled: it runs on until every id was (no longer than "
        f"{args.get('c_stream_cap', args['c_cap']):.0f} s), and where not every id was, its "
        "figure is not a verified one (bytes per polled id, the same growth / ids polled, "
        "bounds it from the other side). The naive scripts run only up to "
        f"{args['c_naive_max']:,} ids (one task per id would need gigabytes at a million).",
        "",
        *_table(
            [
                "client",
                "ids",
                "polled at least once",
                "run s",
                "peak RSS MiB",
                "1-id RSS MiB",
                "bytes per polled id",
                "bytes per waiting id",
                "batchpoll ÷ this",
                "server CPU %",
            ],
            rows,
        ),
        "",
    ]


def section_d(meta: dict[str, Any]) -> list[str]:
    st = meta.get("startup")
    if not st:
        return []
    rows = [
        [
            f"`{k}`",
            f"{v['median_ms']:.0f}",
            f"{v['min_ms']:.0f}",
            f"{v['max_ms']:.0f}",
            str(v["runs"]),
            v["tool"],
        ]
        for k, v in st.items()
    ]
    return [
        "## (d) Start-up",
        "",
        "Wall time on the client core; `batchpoll run` polls 1 id against the ready server.",
        "",
        *_table(["command", "median ms", "min ms", "max ms", "runs", "timed by"], rows),
        "",
    ]


def section_server(med: dict[tuple[str, str], Row], meta: dict[str, Any]) -> list[str]:
    lines = ["## Is the server the limit?", ""]
    a_runs = {c: m for (w, c), m in med.items() if w == "a"}
    if a_runs:
        top = max(a_runs.values(), key=lambda m: m["polls_s"])
        busiest = max(m["server_cpu_pct"] for m in a_runs.values())
        lines.append(
            f"- The fastest client in (a) made {top['polls_s']:,.0f} polls/s; the server's "
            f"busiest median was {busiest:.0f}% of its core."
        )
    probe = meta.get("probe")
    if probe and probe.get("rps"):
        lines.append(
            f"- wrk ({probe['connections']} connections, on the client core) got "
            f"{probe['rps']:,.0f} requests/s from the same server ({probe['server_cpu_pct']:.0f}% "
            "of its core): the server's capacity, against which the clients' rates compare."
        )
    else:
        lines.append("- No wrk probe (wrk not installed or --probe-s 0).")
    lines.append(
        "- One server process: on this machine a second one (`reuse_port`) would have to share "
        "a core with the first or with the client, so it could not add capacity."
    )
    return [*lines, ""]


def how(args: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    md = [
        "## How it is measured",
        "",
        "- Server: `benchmarks/server.py`, aiohttp's low-level `web.Server` on uvloop, one "
        "process. It counts requests and distinct ids and keeps every request's arrival time "
        "in a preallocated array; rates and windows are computed from those.",
        "- Client CPU and peak RSS: `os.wait4` on the client's pid (the kernel's rusage of that "
        "child: user + sys seconds, `ru_maxrss`), whole process, start-up included.",
        "- polls/s = requests the server counted / client wall time (start to exit).",
        "- Clients: batchpoll is `python -m batchpoll run` with JSON logs to a file and the "
        "sink on; the peers are `benchmarks/peers/*.py` with the same flags. Each run gets a "
        "fresh server state (`POST /__bench/reset`).",
    ]
    if args.get("httpx_ids") and args["httpx_ids"] < args["a_ids"]:
        md.append(
            f"- naive_httpx runs {args['httpx_ids']:,} of the {args['a_ids']:,} ids in (a): it "
            "spends milliseconds of CPU per request (httpcore's pool checks every connection "
            "on every request), so the full set would take several minutes per round. Its "
            "figures are per request, so they compare; its wall time does not."
        )
    if meta.get("missing"):
        md.append(f"- Not run (package not installed): {', '.join(meta['missing'])}.")
    if meta.get("skipped"):
        md.append(f"- Skipped for time: {', '.join(meta['skipped'])}.")
    md += [f"- {n}" for n in meta.get("notes", [])]
    return [*md, ""]
