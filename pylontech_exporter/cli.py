"""``pylontech-exporter``: serve metrics (default), ``scan`` the bus, ``dump`` one snapshot.

Flags are Prometheus-style (``--serial.port``); each also reads an environment variable,
``--a.b-c`` <-> ``PYLONTECH_EXPORTER_A_B_C``. A flag on the command line wins.
Configuration errors print one line that says what to fix and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from ._version import __version__
from .config import (
    DEFAULT_BAUDRATE,
    DEFAULT_COMMAND_GAP,
    DEFAULT_LISTEN_MAX_AGE,
    DEFAULT_TIMEOUT,
    PROTOCOLS,
    BankConfig,
    Config,
    banks_from_flags,
    check_ports,
    load_config,
)
from .errors import ConfigError
from .logging_setup import FORMATS, LEVELS, kv, setup_logging
from .models import MAX_MODULES_PER_GROUP, master_address, module_position
from .rs485.passive import group_of

if TYPE_CHECKING:
    from .bank import Bank

log = logging.getLogger("pylontech_exporter")

PROG = "pylontech-exporter"
ENV_PREFIX = "PYLONTECH_EXPORTER_"
COMMANDS = ("scan", "dump")
EXIT_CONFIG = 2
#: 128 + SIGINT, as a shell reports Ctrl-C.
EXIT_INTERRUPTED = 130
NO_SOURCE = (
    "nothing to read: give --serial.port (a device or pyserial URL such as "
    "socket://10.0.0.7:8899), --config.file (YAML with the banks) or --simulate "
    "(built-in virtual battery stack)"
)


def env_name(flag: str) -> str:
    """``--serial.command-gap`` -> ``PYLONTECH_EXPORTER_SERIAL_COMMAND_GAP``."""
    return ENV_PREFIX + flag.lstrip("-").replace(".", "_").replace("-", "_").upper()


# --- argument types: messages say what is expected -----------------------------------------


def _number(kind: str, convert: Callable[[str], Any], check: Callable[[Any], bool]) -> Any:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
        return value

    parse.__name__ = kind
    return parse


positive_int = _number("a positive integer", int, lambda v: v > 0)
module_count = _number("a module count 1..16", int, lambda v: 1 <= v <= 16)
group_number = _number("a group number 0..7 (DIP switches 2-4)", int, lambda v: 0 <= v <= 7)
positive_seconds = _number(
    "a positive number of seconds", float, lambda v: math.isfinite(v) and v > 0
)
seconds = _number("a number of seconds >= 0", float, lambda v: math.isfinite(v) and v >= 0)
ttl_seconds = _number("a number of seconds 0..3600", float, lambda v: 0 <= v <= 3600)
offset_seconds = _number(
    "a number of seconds 0..60 (or leave it out: measured)", float, lambda v: 0 <= v <= 60
)


def _choice(name: str, choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    parse.__name__ = name
    return parse


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _Append(argparse._AppendAction):
    """``append`` whose first use on the command line replaces the default (which may
    come from the environment) instead of adding to it: flags win over the environment."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        seen = f"_{self.dest}_seen"
        if not getattr(namespace, seen, False):
            setattr(namespace, seen, True)
            setattr(namespace, self.dest, None)
        super().__call__(parser, namespace, values, option)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and environment-variable defaults."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")

    def apply_environment(self, environ: dict[str, str]) -> set[str]:
        """Use ``PYLONTECH_EXPORTER_*`` variables as defaults (flags still win). Returns
        the destinations they set."""
        applied = set()
        for action in self._actions:
            flags = [o for o in action.option_strings if o.startswith("--")]
            if not flags or action.dest in ("help", "version"):
                continue
            name = env_name(flags[0])
            if name not in environ:
                continue
            text = environ[name]
            try:
                if isinstance(action, argparse._StoreTrueAction):
                    value: Any = _boolean(text)
                elif isinstance(action, argparse._AppendAction):
                    convert = action.type or str
                    value = [convert(p.strip()) for p in text.split(",") if p.strip()]  # type: ignore[operator]
                else:
                    value = action.type(text) if action.type else text  # type: ignore[operator]
            except argparse.ArgumentTypeError as error:
                self.error(f"environment variable {name}: {error}")
            action.default = value
            applied.add(action.dest)
        return applied


def build_parser(command: str | None = None) -> Parser:
    """The parser of ``command`` (None: the exporter itself)."""
    from .simulator.inverter import PROFILES as INVERTER_PROFILES

    prog = PROG if command is None else f"{PROG} {command}"
    descriptions = {
        None: "Prometheus exporter for Pylontech low-voltage batteries (RS485 protocol V3.3\n"
        "or the RS232 console). From start-up, in the background, it finds the modules of\n"
        "every bank and reads their static data (serial numbers, firmware, limits). Each\n"
        "scrape reads the modules' values and alarms within Prometheus' scrape timeout; a\n"
        "snapshot younger than --cache.ttl is served as is. With --serial.listen-only it\n"
        "sends nothing and serves what it hears another master ask.",
        "scan": "Probe every bus address and list the modules that answer "
        "(address, group, module position, serial number, firmware).",
        "dump": "Read one snapshot of every configured bank and print it.",
    }
    epilog = (
        "commands:\n  scan    find the modules on the bus\n  dump    print one snapshot\n"
        "  assets  write the dashboard, rules and deploy files to a directory\n"
        f"\nEvery flag --a.b-c can also be set as environment variable {ENV_PREFIX}A_B_C."
        if command is None
        else f"Every flag --a.b-c can also be set as environment variable {ENV_PREFIX}A_B_C."
    )
    parser = Parser(
        prog=prog,
        description=descriptions[command],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("where the batteries are")
    source.add_argument(
        "--serial.port",
        dest="serial_port",
        metavar="PORT",
        help="serial device or pyserial URL, e.g. /dev/ttyUSB0, socket://10.0.0.7:8899, "
        "rfc2217://host:port",
    )
    source.add_argument(
        "--serial.baudrate",
        dest="serial_baudrate",
        type=positive_int,
        default=DEFAULT_BAUDRATE,
        metavar="BAUD",
        help="115200 with DIP switch 1 off, 9600 with it on (default %(default)s)",
    )
    source.add_argument(
        "--serial.timeout",
        dest="serial_timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long a response may stay silent before it counts as lost (default %(default)s)",
    )
    source.add_argument(
        "--serial.command-gap",
        dest="serial_command_gap",
        type=seconds,
        default=DEFAULT_COMMAND_GAP,
        metavar="SECONDS",
        help="pause between two requests, some manuals ask for one (default %(default)s)",
    )
    source.add_argument(
        "--group",
        dest="group",
        type=group_number,
        action=_Append,
        metavar="N",
        help="group (0..7) to read on --serial.port; repeat for several (default 0)",
    )
    source.add_argument(
        "--modules",
        dest="modules",
        type=module_count,
        metavar="N",
        help="modules per group on --serial.port, skipping discovery (default: discover)",
    )
    source.add_argument(
        "--serial.protocol",
        dest="serial_protocol",
        type=_choice("protocol", PROTOCOLS),
        default="rs485",
        metavar="PROTOCOL",
        help="rs485 (the RS485 port) or console (the RS232 console port, 115200 baud on "
        "current firmware, for a stack whose RS485 port the inverter holds) "
        "(default %(default)s)",
    )
    source.add_argument(
        "--console.wakeup",
        dest="console_wakeup",
        action="store_true",
        help="console of old firmware (US2000B, US3000) that starts at 1200 baud: send the "
        "switch frame at 1200 baud when no prompt answers, then talk at --serial.baudrate",
    )
    source.add_argument(
        "--serial.listen-only",
        dest="serial_listen_only",
        action="store_true",
        help="another device (an inverter) is the RS485 master: listen to its polling "
        "and decode the answers, never send a byte",
    )
    source.add_argument(
        "--listen.max-age",
        dest="listen_max_age",
        type=_number("a number of seconds 1..3600", float, lambda v: 1 <= v <= 3600),
        default=DEFAULT_LISTEN_MAX_AGE,
        metavar="SECONDS",
        help="listen-only: export what was heard this recently, a module not heard for "
        "longer is down (default %(default)s: three poll cycles of a slow inverter)",
    )
    source.add_argument(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        help="YAML file with the banks (name, port, group, baudrate, modules, bank_query, "
        "protocol, listen_only, ...; see the README)",
    )
    source.add_argument(
        "--simulate",
        dest="simulate",
        action="store_true",
        help="read a built-in virtual battery stack instead of real batteries",
    )
    source.add_argument(
        "--simulate.inverter",
        dest="simulate_inverter",
        type=_choice("profile", list(INVERTER_PROFILES)),
        default="full",
        metavar="PROFILE",
        help="with --serial.listen-only: how the virtual inverter polls the virtual stack, "
        f"one of {', '.join(INVERTER_PROFILES)} (default %(default)s)",
    )
    source.add_argument(
        "--simulate.modules",
        dest="simulate_modules",
        type=module_count,
        default=3,
        metavar="N",
        help="modules per group of the virtual stack (default %(default)s)",
    )
    if command is None:
        parser.add_argument(
            "--config.check",
            dest="config_check",
            action="store_true",
            help="check the flags, the config file and the web config file (its certificates "
            "load), that each serial device exists and is free and that each gateway's host "
            "resolves, then exit: 0 ok, 2 not. Gateways are not connected to (one that is down "
            "now may be up at the next scrape)",
        )
        web = parser.add_argument_group("serving")
        web.add_argument(
            "--web.listen-address",
            dest="web_listen_address",
            default=":10460",
            metavar="[HOST]:PORT",
            help="address to listen on; :PORT for all interfaces (default %(default)s)",
        )
        web.add_argument(
            "--web.config.file",
            dest="web_config_file",
            metavar="FILE",
            help="YAML file (exporter-toolkit format) enabling TLS, client certificates, "
            "basic auth and response headers",
        )
        web.add_argument(
            "--web.telemetry-path",
            dest="web_telemetry_path",
            default="/metrics",
            metavar="PATH",
            help="path of the metrics (default %(default)s)",
        )
        web.add_argument(
            "--web.disable-exporter-metrics",
            dest="web_disable_exporter_metrics",
            action="store_true",
            help="leave out the process_* and python_* metrics",
        )
        web.add_argument(
            "--cache.ttl",
            dest="cache_ttl",
            type=ttl_seconds,
            default=5.0,
            metavar="SECONDS",
            help="serve a snapshot this young as is; 0 reads at every scrape (default %(default)s)",
        )
        web.add_argument(
            "--scrape.timeout-offset",
            dest="scrape_timeout_offset",
            type=offset_seconds,
            default=None,
            metavar="SECONDS",
            help="finish this long before Prometheus' scrape timeout; default: the measured "
            "time to render the metrics plus 50 ms (about 0.1 s)",
        )
    else:
        parser.add_argument(
            "--listen.duration",
            dest="listen_duration",
            type=positive_seconds,
            default=10.0,
            metavar="SECONDS",
            help="with --serial.listen-only: how long to listen (default %(default)s)",
        )
    if command == "scan":
        parser.add_argument(
            "--scan.timeout",
            dest="scan_timeout",
            type=positive_seconds,
            default=0.3,
            metavar="SECONDS",
            help="wait per address (default %(default)s)",
        )
    elif command == "dump":
        parser.add_argument("--json", dest="json", action="store_true", help="print JSON")
        parser.add_argument(
            "--dump.timeout",
            dest="dump_timeout",
            type=positive_seconds,
            default=30.0,
            metavar="SECONDS",
            help="give up reading after this long (default %(default)s)",
        )
    logs = parser.add_argument_group("logging")
    logs.add_argument(
        "--log.level",
        dest="log_level",
        type=_choice("level", list(LEVELS)),
        default="info",
        metavar="LEVEL",
        help=f"one of {', '.join(LEVELS)} (default %(default)s)",
    )
    logs.add_argument(
        "--log.format",
        dest="log_format",
        type=_choice("format", FORMATS),
        default="logfmt",
        metavar="FORMAT",
        help="logfmt or json, on stderr (default %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def parse_args(argv: Sequence[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    """Split off the command (``scan``/``dump``, before or after the flags) and parse the
    flags."""
    args = list(argv)
    command = _command(args)
    parser = build_parser(command)
    from_environment = parser.apply_environment(dict(os.environ) if environ is None else environ)
    namespace = parser.parse_args(args)
    given = {
        action.dest
        for action in parser._actions
        if any(a == o or a.startswith(o + "=") for a in args for o in action.option_strings)
    }
    #: What only the environment set (a flag on the command line wins over it).
    namespace.from_environment = from_environment - given
    #: What the command line or the environment set (the rest are defaults).
    namespace.set_explicitly = given | from_environment
    namespace.command = command
    namespace.parser = parser
    #: Whether groups were asked for (scan then probes only those, not every address).
    namespace.group_given = namespace.group is not None
    if namespace.group is None:
        namespace.group = [0]
    return namespace


def _command(args: list[str]) -> str | None:
    """Take the command out of ``args``: the first word that is not a flag or a flag's
    value."""
    takes_value = {
        option
        for name in (None, *COMMANDS)
        for action in build_parser(name)._actions
        for option in action.option_strings
        if action.nargs != 0
    }
    for index, word in enumerate(args):
        if word.startswith("-"):
            continue
        previous = args[index - 1] if index else ""
        if previous in takes_value:
            continue  # a flag's value
        if word in COMMANDS:
            return args.pop(index)
        return None  # argparse says what this word is doing here
    return None


# --- from flags to banks -------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    """The one-line configuration error, exit status 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def build_config(args: argparse.Namespace) -> Config:
    """Banks from --serial.port/--group or --config.file (not --simulate)."""
    if args.serial_port and args.config_file:
        if "serial_port" not in args.from_environment:
            raise ConfigError(
                "--serial.port and --config.file both given; put every bank in the config file"
            )
        # The config file lists the banks: the port of the environment (the shipped
        # /etc/default/pylontech-exporter sets one) gives way to it.
        log.info(
            "the config file lists the banks; PYLONTECH_EXPORTER_SERIAL_PORT is not used",
            extra=kv(config=args.config_file),
        )
        args.serial_port = None
    if args.modules and not args.serial_port:
        raise ConfigError(
            "--modules applies to --serial.port; in a config file give each bank `modules:`"
        )
    settings = dict(
        baudrate=args.serial_baudrate,
        timeout=args.serial_timeout,
        command_gap=args.serial_command_gap,
        listen_only=args.serial_listen_only,
        listen_max_age=args.listen_max_age,
        protocol=args.serial_protocol,
        console_wakeup=args.console_wakeup,
    )
    if args.config_file:
        return load_config(args.config_file, **settings)
    return banks_from_flags(args.serial_port, args.group, modules=args.modules, **settings)


@contextlib.contextmanager
def open_source(args: argparse.Namespace) -> Iterator[tuple[Config, bool]]:
    """The configured banks (checked, ports opened once) or a running virtual stack.
    Yields (config, simulated). Exits 2 on bad configuration."""
    if not (args.serial_port or args.config_file or args.simulate):
        fail(NO_SOURCE)
    if "simulate_inverter" in args.set_explicitly and not (
        args.simulate and args.serial_listen_only
    ):
        fail(
            "--simulate.inverter chooses how the virtual inverter polls the virtual stack: "
            "give --simulate --serial.listen-only too"
        )
    if args.simulate:
        if args.serial_port or args.config_file:
            fail(
                "--simulate reads the built-in virtual stack; leave out --serial.port and "
                "--config.file"
            )
        if args.serial_protocol == "console" and (args.serial_listen_only or len(args.group) > 1):
            fail(
                "--simulate --serial.protocol console reads one stack through its console: "
                "one --group, no --serial.listen-only"
            )
        from .demo import simulated_config

        with simulated_config(
            groups=list(dict.fromkeys(args.group)),
            modules=args.simulate_modules,
            timeout=args.serial_timeout,
            inverter=args.simulate_inverter if args.serial_listen_only else None,
            listen_max_age=args.listen_max_age,
            protocol=args.serial_protocol,
        ) as config:
            yield config, True
        return
    try:
        config = build_config(args)
        check_ports(config.banks)
    except ConfigError as error:
        fail(str(error))
    yield config, False


# --- serve ---------------------------------------------------------------------------------


def load_web(args: argparse.Namespace) -> Any:
    """The checked ``--web.config.file`` (a default WebConfig without one); exits 2."""
    from .webconfig import WebConfig, load_web_config

    if not args.web_config_file:
        return WebConfig()
    try:
        return load_web_config(args.web_config_file)
    except ConfigError as error:
        fail(str(error))


def build_server(
    config: Config,
    *,
    address: tuple[str, int],
    telemetry_path: str = "/metrics",
    cache_ttl: float = 5.0,
    timeout_offset: float | None = None,
    exporter_metrics: bool = True,
    simulated: bool = False,
    web_config: Any = None,
    **server_options: Any,
) -> tuple[Any, Any]:
    """The exporter for ``config``: (ExporterServer, Poller), not yet serving HTTP but
    reading the lines (discovery starts now). Raises OSError when the address cannot be
    listened on."""
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector
    from prometheus_client.registry import CollectorRegistry

    from . import assets, landing
    from .cache import SnapshotCache
    from .collector import PylontechCollector
    from .exposition import Exposition
    from .poller import Poller
    from .server import ExporterServer

    poller = Poller(config.banks)
    cache = SnapshotCache(poller.read, poller.unread, cache_ttl)
    registry = CollectorRegistry()
    registry.register(PylontechCollector(cache.get, cache_ttl))
    if exporter_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    try:
        server = ExporterServer(
            address,
            exposition=Exposition(registry, cache.get),
            landing=lambda: landing.render(
                config.banks,
                cache.last,
                discovering={b.name for b in poller.banks if b.discovering},
                telemetry_path=telemetry_path,
                simulated=simulated,
            ),
            docs=assets.doc,
            ready=lambda: not_ready(poller.banks),
            telemetry_path=telemetry_path,
            timeout_offset=timeout_offset,
            web_config=web_config,
            **server_options,
        )
    except BaseException:
        poller.close()
        raise
    poller.start()
    return server, poller


def not_ready(banks: Sequence[Bank]) -> str | None:
    """What ``/-/ready`` waits for: the first bank whose modules are still being discovered
    or (given with ``--modules`` or just discovered) whose static data is still being read;
    None when every bank is settled."""
    for bank in banks:
        if bank.discovering:
            problem = f": {bank.problem}" if bank.problem else ""
            return f"bank {bank.name} is still being discovered{problem}"
        if not bank.settled:
            return (
                f"bank {bank.name} is reading the static data (serial numbers, firmware, "
                f"limits) of its {len(bank.modules)} module(s)"
            )
    return None


def describe_bank(bank: BankConfig) -> str:
    """How ``--config.check`` sums up a bank: where, which protocol, how its modules are
    found."""
    serial = bank.serial
    how = serial.protocol + (" listen-only" if serial.listen_only else "")
    how += f" at {serial.baudrate} baud" + (" (wakeup from 1200)" if serial.console_wakeup else "")
    modules = f"{bank.modules} module(s)" if bank.modules else "modules discovered"
    return f"{bank.port} group {bank.group}, {how}, {modules}"


def serve(args: argparse.Namespace) -> int:
    from .server import parse_listen_address

    try:
        address = parse_listen_address(args.web_listen_address)
    except ValueError as error:
        fail(str(error))
    path = args.web_telemetry_path
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", path) or path.startswith(("/-/", "/docs/")):
        fail(
            f"--web.telemetry-path {path!r}: must be a path such as /metrics (letters, "
            "digits, . _ ~ - between slashes; not /, /-/... or /docs/...)"
        )
    web_config = load_web(args)
    with open_source(args) as (config, simulated):
        if args.config_check:
            print(
                f"{config.source}: ok, {len(config.banks)} bank(s): "
                + ", ".join(f"{b.name} ({describe_bank(b)})" for b in config.banks)
                + (f"; {args.web_config_file}: ok" if args.web_config_file else "")
            )
            return 0
        try:
            server, poller = build_server(
                config,
                address=address,
                telemetry_path=path,
                cache_ttl=args.cache_ttl,
                timeout_offset=args.scrape_timeout_offset,
                exporter_metrics=not args.web_disable_exporter_metrics,
                simulated=simulated,
                web_config=web_config,
            )
        except OSError as error:
            fail(
                f"--web.listen-address {args.web_listen_address}: cannot listen: "
                f"{error.strerror or error}"
            )

        def shutdown(signum: int, frame: Any) -> None:
            log.info("shutting down", extra=kv(signal=signal.Signals(signum).name))
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, shutdown)
        signal.signal(signal.SIGINT, shutdown)
        host, port = server.server_address[:2]
        log.info(
            "listening",
            extra=kv(
                address=f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}",
                path=path,
                version=__version__,
                simulated=simulated,
                tls=server.ssl_context is not None,
                auth=server.auth is not None,
                banks=",".join(f"{b.name}@{b.port}/{b.group}" for b in config.banks),
            ),
        )
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
            poller.close()
    return 0


# --- scan ----------------------------------------------------------------------------------


#: Addresses probed when no group is given: group 0 position 1 (0x02) up to group 7
#: position 16 (0x81), end exclusive.
SCAN_RANGE = (0x02, 0x82)


def _ranges(args: argparse.Namespace, groups: list[int]) -> list[tuple[int, int]]:
    if args.group_given or args.config_file or args.simulate:
        return [
            (master_address(g), master_address(g) + MAX_MODULES_PER_GROUP)
            for g in sorted(set(groups))
        ]
    return [SCAN_RANGE]


def _print_modules(rows: list[tuple[str, int, str, str]]) -> None:
    """The table of what answered: (port, address, serial number, firmware)."""
    header = ("port", "address", "group", "module", "serial number", "firmware")
    table = [header]
    for port, address, serial_number, firmware in rows:
        group = group_of(address)
        where = ("?", "?") if group is None else (str(group), str(module_position(address, group)))
        table.append((port, f"0x{address:02X}", *where, serial_number, firmware))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"{len(rows)} module(s) found", file=sys.stderr)


def _scan_port(
    port: str, serial: Any, ranges: list[tuple[int, int]], timeout: float, found: list[Any]
) -> None:
    """Probe ``ranges`` on ``port``; each module that answers goes into ``found`` as it
    answers (what an interruption leaves is listed), its firmware version when all did."""
    from .errors import PylontechError, TransportError
    from .rs485.client import Pylontech

    tty = sys.stderr.isatty()
    count = sum(end - start for start, end in ranges)
    # A silent address costs the timeout and a little more (the request, the reader's
    # wake-ups; about 20 ms more each on a loaded 2-core machine): a lower bound.
    least = math.floor(count * timeout)
    print(
        f"scanning {port} at {serial.baudrate} baud: {count} addresses, {timeout:g} s each "
        f"when silent, {least} s or more when nothing answers (Ctrl-C stops and lists what "
        "was found)",
        file=sys.stderr,
    )
    mine: list[int] = []

    def progress(address: int, serial_number: str | None) -> None:
        if serial_number is not None:
            found.append((port, address, serial_number, "?"))
            mine.append(len(found) - 1)
            print(
                ("\r\x1b[K" if tty else "") + f"  0x{address:02X}: found {serial_number}",
                file=sys.stderr,
            )
        elif tty:
            print(
                f"\r\x1b[K  0x{address:02X} (group {group_of(address)}) ... {len(mine)} found",
                end="",
                file=sys.stderr,
                flush=True,
            )

    with Pylontech(
        port, serial.baudrate, timeout=serial.timeout, command_gap=serial.command_gap
    ) as client:
        try:
            for start, end in ranges:
                client.scan_for_batteries(start, end, timeout=timeout, progress=progress)
        except TransportError as error:
            fail(str(error))
        finally:
            if tty:
                print("\r\x1b[K", end="", file=sys.stderr)
        for index in mine:
            address, serial_number = found[index][1], found[index][2]
            try:
                version = client.get_software_version(address)
                firmware = f"{version.mainline_version} ({version.manufacturer_version})"
            except PylontechError as error:
                firmware = f"? ({error.reason})"
            found[index] = (port, address, serial_number, firmware)


def _scan_console(port: str, serial: Any, group: int, found: list[Any]) -> None:
    """The batteries ``pwr`` lists on the console ``port``, with their ``info N``."""
    from .console.scan import Battery, scan
    from .errors import PylontechError
    from .models import module_address

    print(f"reading pwr on the console {port} at {serial.baudrate} baud", file=sys.stderr)

    def add(battery: Battery) -> None:
        firmware = f"{battery.firmware} ({battery.device_name})"
        found.append((port, module_address(group, battery.index), battery.serial_number, firmware))

    try:
        scan(serial, add)
    except PylontechError as error:
        print(
            f"the console on {port} did not answer pwr ({error}): check the console cable "
            "(RJ45/RJ11 'Console', not the RS485/CAN port) and the baud rate (115200; old "
            "firmware starts at 1200: --console.wakeup)",
            file=sys.stderr,
        )


def _listen_port(port: str, serial: Any, duration: float, found: list[Any]) -> None:
    """Listen to ``port`` for ``duration`` seconds (every group) and add each module
    heard to ``found``."""
    import dataclasses

    from .poller import Poller

    print(
        f"listening to {port} at {serial.baudrate} baud for {duration:g} s; nothing is sent "
        "(Ctrl-C stops and lists what was heard)",
        file=sys.stderr,
    )
    listening = dataclasses.replace(serial, listen_max_age=max(duration, 1.0))
    banks = [BankConfig(name=str(group), serial=listening, group=group) for group in range(8)]
    poller = Poller(banks)
    # Every group is listened to, and most are silent: that is no news here.
    logging.getLogger("pylontech_exporter.bank").setLevel(logging.ERROR)
    try:
        poller.start()
        time.sleep(duration)
    finally:
        snapshot = poller.read(time.monotonic() + 1.0)
        poller.close()
        for bank in snapshot.banks:
            for module in bank.modules:
                if module.up or module.serial_number:
                    firmware = module.software_version or "? (not polled by the master)"
                    found.append((port, module.address, module.serial_number or "?", firmware))


def nothing_found(serials: Sequence[Any]) -> str:
    """What a scan that found nothing tells to check, for each kind of port it read."""
    hints = []
    for serial in serials:
        if serial.listen_only:
            hints.append(
                "nothing heard: check the wiring (A/B), the baud rate (the inverter's) and "
                "that the inverter polls the batteries on this line"
            )
        elif serial.protocol == "console":
            hints.append("the console listed no battery")
        else:
            hints.append(
                "no battery answered: check the wiring (A/B), the baud rate (DIP switch 1) "
                "and that no other master is on the bus"
            )
    return "; ".join(dict.fromkeys(hints))


def scan(args: argparse.Namespace) -> int:
    with open_source(args) as (config, _simulated):
        ports: dict[str, tuple[Any, list[int]]] = {}
        for bank in config.banks:
            ports.setdefault(bank.port, (bank.serial, []))[1].append(bank.group)
        rows: list[tuple[str, int, str, str]] = []
        try:
            for port, (serial, groups) in ports.items():
                if serial.listen_only:
                    _listen_port(port, serial, args.listen_duration, rows)
                    continue
                if serial.protocol == "console":
                    _scan_console(port, serial, groups[0], rows)
                    continue
                _scan_port(port, serial, _ranges(args, groups), args.scan_timeout, rows)
        except KeyboardInterrupt:
            print(f"{PROG} scan: interrupted; found so far:", file=sys.stderr)
            _print_modules(rows)
            return EXIT_INTERRUPTED
        if not rows:
            print(nothing_found([serial for serial, _ in ports.values()]), file=sys.stderr)
            return 1
        _print_modules(rows)
        return 0


# --- dump ----------------------------------------------------------------------------------


def dump(args: argparse.Namespace) -> int:
    from .dump import render_json, render_table
    from .poller import Poller

    with open_source(args) as (config, _simulated):
        poller = Poller(config.banks)
        started = time.monotonic()
        deadline = started + args.dump_timeout
        listening = [b for b in config.banks if b.serial.listen_only]
        if listening:
            deadline = max(deadline, started + args.listen_duration + 5.0)
            print(
                f"listening to {', '.join(dict.fromkeys(b.port for b in listening))} for "
                f"{args.listen_duration:g} s; nothing is sent",
                file=sys.stderr,
            )
        try:
            # Discovery and the static data first (as an exporter does at start), or the
            # listening time, then one snapshot like a scrape, all within --dump.timeout.
            poller.start()
            heard = started + (args.listen_duration if listening else 0.0)
            learnt = max(deadline - min(10.0, args.dump_timeout / 2), heard)  # then the read
            while time.monotonic() < learnt and (
                time.monotonic() < heard or not all(b.settled for b in poller.banks)
            ):
                time.sleep(0.05)
            reading = time.monotonic()
            snapshot = poller.read(deadline)
        finally:
            poller.close()
        before = "listening" if listening else "finding the modules and their static data"
        print(
            f"{PROG} dump: {time.monotonic() - started:.2f} s in all: {reading - started:.2f} s "
            f"{before}, then {snapshot.duration:.2f} s reading",
            file=sys.stderr,
        )
        print(render_json(snapshot) if args.json else render_table(snapshot))
        return 0 if all(b.up for b in snapshot.banks) else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["assets"]:  # files, not batteries: none of the flags below apply
        from .assets import main as assets

        return assets(argv[1:], Parser(prog=f"{PROG} assets"))
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    if args.command is None:
        return serve(args)
    try:
        return scan(args) if args.command == "scan" else dump(args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
