"""``python -m bench``: the benchmark harness. Prints markdown; see docs/benchmarks.md.

Everything runs against the virtual stack served with real wire timing (:mod:`bench.line`):
a real exporter process scraped over HTTP from its start (:mod:`bench.scrape`), the
scrape-timeout matrix (:mod:`bench.matrix`), the peer libraries (:mod:`bench.peers`),
decoding and rendering (:mod:`bench.codec`), the soak with hostile clients
(:mod:`bench.soak`) and the RS232 console's scrape against its floor (:mod:`bench.console`).
``--quick`` runs a small form of each (the smoke test's run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from . import codec, console, matrix, peers, scrape, soak
from .section import (
    BATTERIES,
    BAUDS,
    GROUPS,
    MODULES,
    TIMEOUTS,
    Options,
    Result,
    load,
    machine,
)

#: The sections, in the order they run; a new one is a module with ``run`` and a line here.
SECTIONS: dict[str, Callable[[Options], Result]] = {
    "scrape": scrape.run,
    "matrix": matrix.run,
    "peers": peers.run,
    "codec": codec.run,
    "soak": soak.run,
    "console": console.run,
}

TITLES = {
    "scrape": "Full scrape over HTTP, from the exporter's start",
    "matrix": "Scrape timeout x stack",
    "peers": "Peers",
    "codec": "Decoding and rendering",
    "soak": "Soak",
    "console": "RS232 console: scrape against the line floor",
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(","))


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small form of every section")
    parser.add_argument(
        "--only", type=_names, metavar="A,B", help=f"these sections only ({', '.join(SECTIONS)})"
    )
    parser.add_argument("--modules", type=_ints, default=MODULES, help="modules per group")
    parser.add_argument("--groups", type=_ints, default=GROUPS, help="group counts")
    parser.add_argument("--bauds", type=_ints, default=BAUDS, help="baud rates")
    parser.add_argument("--timeouts", type=_floats, default=TIMEOUTS, help="scrape timeouts, s")
    parser.add_argument(
        "--batteries", type=_ints, default=BATTERIES, help="batteries on the console"
    )
    parser.add_argument(
        "--latency", type=float, default=Options.latency, help="response latency, s"
    )
    parser.add_argument("--soak-scrapes", type=int, default=Options.soak_scrapes)
    parser.add_argument("--concurrent", type=int, default=Options.concurrent)
    parser.add_argument(
        "--sequential-peers",
        action="store_true",
        help="run the peers one after the other (default: in parallel, each on its own line; "
        "they sleep in their read timeouts)",
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the report to FILE too")
    parser.add_argument("--plot", metavar="PNG", help="write the scrape-time plot")
    return parser.parse_args(argv)


def run_section(name: str, options: Options) -> dict[str, Any]:
    before, began = load(), time.monotonic()
    result = SECTIONS[name](options)
    return {
        "name": name,
        "load_before": before,
        "load_after": load(),
        "seconds": time.monotonic() - began,
        "markdown": result.markdown,
        "data": result.data,
        "failures": result.failures,
    }


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, {m['platform']}; "
        f"commit {m['commit']}; "
        f"{'quick' if results['options']['quick'] else 'full'} run of {results['seconds']:.0f} s, "
        f"response latency {results['options']['latency']} s",
    ]
    for section in results["sections"]:
        out += [
            "",
            f"### {TITLES.get(section['name'], section['name'])}",
            "",
            f"Load (1, 5, 15 min) {section['load_before']} before, {section['load_after']} "
            f"after; {section['seconds']:.0f} s.",
            "",
            section["markdown"],
        ]
        out += [f"\n**Wrong:** {failure}" for failure in section["failures"]]
    return "\n".join(out)


def plot(results: dict[str, Any], path: str) -> None:
    """Seconds per full read of one group against module count, per baud rate: the
    exporter's steady scrape and its floor, and the peers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = {s["name"]: s["data"] for s in results["sections"]}
    scrapes = [r for r in sections.get("scrape", []) if r["groups"] == 1]
    peer_runs = [r for r in (sections.get("peers") or {}).get("runs", []) if not r["error"]]
    bauds = sorted({r["baud"] for r in scrapes} | {r["baud"] for r in peer_runs}, reverse=True)
    figure, axes = plt.subplots(1, len(bauds), figsize=(6 * len(bauds), 4.8), squeeze=False)
    for axis, baud in zip(axes[0], bauds):
        ours = sorted((r for r in scrapes if r["baud"] == baud), key=lambda r: r["modules"])
        if ours:
            x = [r["modules"] for r in ours]
            steady = [
                sorted(s["seconds"] for s in r["steady"])[len(r["steady"]) // 2] for r in ours
            ]
            floor = [sorted(s["floor"] for s in r["steady"])[len(r["steady"]) // 2] for r in ours]
            axis.plot(x, floor, "k--", label="floor of the exporter's scrape")
            axis.plot(x, steady, "o-", label="pylontech-exporter, full scrape over HTTP")
        for style, variant in zip(("s-", "x-", "^-"), peers.VARIANTS):
            rows = sorted(
                (r for r in peer_runs if r["variant"] == variant.name and r["baud"] == baud),
                key=lambda r: r["modules"],
            )
            if rows:
                axis.plot(
                    [r["modules"] for r in rows],
                    [r["wall"] for r in rows],
                    style,
                    label=variant.name,
                )
        axis.set_yscale("log")
        axis.set_xlabel("modules (one group)")
        axis.set_ylabel("seconds per full read (log)")
        axis.set_title(f"{baud} Bd, {results['options']['latency']} s response latency")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = replace(
        Options(),
        quick=args.quick,
        latency=args.latency,
        modules=args.modules,
        bauds=args.bauds,
        groups=args.groups,
        timeouts=args.timeouts,
        batteries=args.batteries,
        soak_scrapes=args.soak_scrapes,
        concurrent=args.concurrent,
        sequential_peers=args.sequential_peers,
    )
    began = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "options": asdict(options), "sections": []}
    for name in args.only or list(SECTIONS):
        results["sections"].append(run_section(name, options))
    results["seconds"] = time.monotonic() - began
    text = report(results)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as output:
            output.write(text + "\n")
    if args.json:
        with open(args.json, "w") as output:
            json.dump(results, output, indent=1, default=_jsonable)
    if args.plot:
        plot(results, args.plot)
    failures = [f for s in results["sections"] for f in s["failures"]]
    for failure in failures:
        print(f"wrong: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _jsonable(value: object) -> object:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
