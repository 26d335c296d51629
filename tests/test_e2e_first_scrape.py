"""Data from the first scrape at a 1 s interval: a real Prometheus (scrape_interval and
scrape_timeout 1 s, the timeout header sent from the first scrape) scrapes fresh
exporter processes, started together with it, for every setup a user is likely to have:

- ``--simulate`` (3 modules);
- a pty with 3, 8 and 16 modules at 115200 Bd and 3 modules at 9600 Bd, answering with
  the 70 ms latency of real modules and paced at the baud rate;
- an LV hub: groups 1 and 2 with 3 modules each on one pty.

For each, ``pylontech_up`` is 1 within the first 3 scrapes, and every dashboard query
(its variables on this setup's job and instance, bank and module on All) has data within
30 s. The setups run side by side, one Prometheus scraping them all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml
from support.dashboard import all_values, load_dashboard
from support.metrics import console_only_families
from support.processes import Exporter
from support.prometheus import Prometheus, dashboard_problems, start_prometheus
from support.rules import ALERT_RULES, RECORDING_RULES, require_binary, shortened_rules
from support.waiting import wait_until

from pylontech_exporter.simulator import BatteryStack, Rs485Responder
from pylontech_exporter.simulator.serve import PtySimulator

pytestmark = pytest.mark.prometheus

INTERVAL = 1
CONSOLE_ONLY = console_only_families()


@dataclass
class Setup:
    name: str
    modules: int = 3
    baudrate: int = 115200
    groups: tuple[int, ...] = (0,)
    simulate: bool = False


SETUPS = [
    Setup("simulate", simulate=True),
    Setup("pty-3"),
    Setup("pty-8", modules=8),
    Setup("pty-16", modules=16),
    Setup("pty-3-9600", baudrate=9600),
    Setup("hub-2x3", groups=(1, 2)),
]


@dataclass
class Running:
    setup: Setup
    exporter: Exporter


#: When the exporters and Prometheus were started (time.monotonic()).
STARTED: list[float] = []


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, list[Running]]]:
    require_binary("promtool")
    tmp = tmp_path_factory.mktemp("first_scrape")
    STARTED.append(time.monotonic())
    with contextlib.ExitStack() as cleanup:
        started: list[Running] = []
        for setup in SETUPS:
            if setup.simulate:
                args = ["--simulate"]
            else:
                stack = BatteryStack(
                    modules=setup.modules, groups=list(setup.groups), model="US3000C", seed=3
                )
                stack.follow_clock()
                pty = cleanup.enter_context(
                    PtySimulator(
                        Rs485Responder(stack),
                        tmp / setup.name,
                        baudrate=setup.baudrate,
                        latency=0.07,
                    )
                )
                args = ["--serial.port", pty.link, "--serial.baudrate", str(setup.baudrate)]
                for group in setup.groups if setup.groups != (0,) else ():
                    args += ["--group", str(group)]
            exporter = cleanup.enter_context(Exporter(*args, ready=False))
            started.append(Running(setup, exporter))
        rules = [
            shortened_rules(RECORDING_RULES, tmp / RECORDING_RULES.name),
            shortened_rules(ALERT_RULES, tmp / ALERT_RULES.name),
        ]
        config = tmp / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": f"{INTERVAL}s",
                        "scrape_timeout": f"{INTERVAL}s",
                        "evaluation_interval": f"{INTERVAL}s",
                    },
                    "rule_files": [str(r) for r in rules],
                    "scrape_configs": [
                        {
                            "job_name": r.setup.name,
                            "static_configs": [{"targets": [r.exporter.address]}],
                        }
                        for r in started
                    ],
                }
            )
        )
        prometheus = start_prometheus(config, tmp)
        cleanup.callback(prometheus.process.stop)
        yield prometheus, started


@pytest.mark.parametrize("index", range(len(SETUPS)), ids=[s.name for s in SETUPS])
def test_up_within_the_first_three_scrapes(running, index):
    prometheus, started = running
    job = started[index].setup.name
    groups = started[index].setup.groups

    def first_three() -> list[dict] | None:
        series = prometheus.samples(f'pylontech_up{{job="{job}"}}', 60)
        return series if series and all(len(s["values"]) >= 3 for s in series) else None

    series = wait_until(first_three, f"three scrapes of {job}", 30)
    assert len(series) == len(groups)  # one pylontech_up per bank
    for bank in series:
        first = [float(value) for _, value in bank["values"][:3]]
        assert 1.0 in first, (job, bank["metric"], first)


def test_every_dashboard_query_has_data_within_30_seconds(running):
    prometheus, started = running
    dashboard = load_dashboard()
    deadline = STARTED[0] + 30
    pending = {r.setup.name: r for r in started}
    problems: dict[str, list[str]] = {}
    while pending and time.monotonic() < deadline:
        for name, run in list(pending.items()):
            values = {**all_values(dashboard), "job": name, "instance": run.exporter.address}
            # A random stack (its cells drift, its charge moves) may have an alert. The
            # console rows have no copy on an RS485 stack: their queries only have to run.
            problems[name] = dashboard_problems(
                prometheus, dashboard, values, INTERVAL, healthy=False, absent=CONSOLE_ONLY
            )
            if not problems[name]:
                del pending[name]
        time.sleep(1)
    assert not pending, "\n".join(f"{n}:\n" + "\n".join(problems[n]) for n in pending)
