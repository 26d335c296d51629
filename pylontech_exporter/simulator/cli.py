"""``pylontech-simulator``: a virtual Pylontech stack on a pty or a TCP port."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Callable, NoReturn

from .._version import __version__
from .battery import BatteryStack
from .console import FIRMWARES, MODEL_FIRMWARE, ConsoleResponder
from .faults import FAULT_HELP, Fault, parse_fault
from .inverter import PROFILES, Inverter
from .models import MODELS, get_model, with_cells
from .responder import Responder
from .rs485 import Rs485Responder
from .serve import GATEWAY_MODES, PtySimulator, TcpSimulator

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr and exit 2 (argparse would also print the usage)."""
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _groups(text: str) -> int | list[int]:
    try:
        if "," not in text:
            count = int(text)
            if not 1 <= count <= 7:
                raise ValueError
            return count
        numbers = [int(part) for part in text.split(",")]
        if not numbers or any(not 0 <= n <= 7 for n in numbers) or len(set(numbers)) < len(numbers):
            raise ValueError
        return numbers
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count 1..7 or distinct group numbers 0..7 like 0,2; not {text!r}"
        ) from None


def _models(text: str) -> list[str]:
    try:
        return [get_model(name.strip()).name for name in text.split(",")]
    except KeyError as error:
        raise argparse.ArgumentTypeError(error.args[0]) from None


def _cells(text: str) -> int:
    if not text.isdigit() or not 8 <= int(text) <= 16:
        raise argparse.ArgumentTypeError(f"expected a cell count 8..16, not {text!r}")
    return int(text)


def _fault(text: str) -> Fault:
    try:
        return parse_fault(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pylontech-simulator",
        description="Serve a virtual Pylontech low-voltage stack (RS485 protocol V3.3) "
        "on a pseudo-terminal or a TCP port until SIGINT/SIGTERM.",
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", metavar="LINK", help="create symlink LINK to a new pty")
    where.add_argument("--tcp", metavar="HOST:PORT", type=_host_port, help="listen on TCP")
    parser.add_argument(
        "--modules", type=int, help="modules per group (3, or as many as --model lists)"
    )
    parser.add_argument(
        "--groups",
        type=_groups,
        default=1,
        help="number of groups (1 = group 0; G > 1 = groups 1..G) or a list like 0,2",
    )
    parser.add_argument(
        "--model",
        type=_models,
        default=["US3000C"],
        help=f"one of {', '.join(MODELS)} (US3000C); a list such as US3000C,US2000B-Plus "
        "gives each module of a group its own model, master first",
    )
    parser.add_argument(
        "--cells", type=_cells, help="cells per module, 8..16 (default: the model's)"
    )
    parser.add_argument(
        "--gateway",
        choices=GATEWAY_MODES,
        default="broadcast",
        help="with --tcp: broadcast (every client sees all bus traffic, as through a real "
        "RS485-to-Ethernet converter; default) or private (each client its own answers)",
    )
    parser.add_argument(
        "--master",
        choices=list(PROFILES),
        metavar="PROFILE",
        help="play an inverter that polls the stack, as the bus master: "
        + "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values())
        + ". Listen to it with pylontech-exporter --serial.listen-only",
    )
    parser.add_argument(
        "--master-period",
        type=_positive(float),
        metavar="SECONDS",
        help="with --master: seconds between poll cycles (default: the profile's)",
    )
    parser.add_argument(
        "--console",
        action="store_true",
        help="serve the RS232 console (the pylon> shell) of one group instead of RS485; "
        "read it with pylontech-exporter --serial.protocol console",
    )
    parser.add_argument(
        "--firmware",
        choices=list(FIRMWARES),
        metavar="FIRMWARE",
        help=f"with --console: the layout, one of {', '.join(FIRMWARES)} (default: the "
        "master's model's: "
        + ", ".join(f"{model} {firmware}" for model, firmware in MODEL_FIRMWARE.items())
        + ")",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--baudrate", type=_positive(int), help="pace answers at this rate")
    parser.add_argument(
        "--latency", type=_positive(float), default=0.07, help="seconds to first byte (0.07)"
    )
    parser.add_argument(
        "--speed", type=_positive(float), default=1.0, help="simulated seconds per second (1)"
    )
    parser.add_argument(
        "--no-bank-query", action="store_true", help="masters ignore the FF bank-wide query"
    )
    parser.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a fault (repeatable), see below",
    )
    parser.add_argument("--version", action="version", version=f"{parser.prog} {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    models = args.model
    count = args.modules if args.modules is not None else (len(models) if len(models) > 1 else 3)
    if not 1 <= count <= 16:
        parser.error(f"--modules must be 1..16, not {count}")
    if len(models) > 1 and count != len(models):
        parser.error(f"--model lists {len(models)} models for --modules {count}")
    if not args.baudrate and args.baudrate is not None:
        parser.error("--baudrate must be positive")
    if args.master and args.tcp and args.gateway != "broadcast":
        parser.error("--master: the inverter's traffic is heard through --gateway broadcast only")
    if args.master_period is not None and (not args.master or args.master_period <= 0):
        parser.error("--master-period needs --master and a positive number of seconds")
    if args.firmware and not args.console:
        parser.error("--firmware chooses the console's layout: give --console too")
    if args.console and args.master:
        parser.error("--master plays an inverter on RS485; the console has no bus master")
    protocol = ConsoleResponder if args.console else Rs485Responder
    for fault in args.fault:
        if fault.kind not in protocol.HONOURED:
            kind = fault.kind.value
            parser.error(
                f"--fault {kind}: an RS485 fault; the console never shows it"
                if args.console
                else f"--fault {kind}: a console fault; RS485 never shows it (give --console)"
            )
    specs = models if len(models) > 1 else models * count
    if args.cells:
        specs = [with_cells(get_model(name), args.cells) for name in specs]
    stack = BatteryStack(
        modules=specs,
        groups=args.groups,
        seed=args.seed,
        bank_query_supported=False if args.no_bank_query else None,
    )
    stack.faults.extend(args.fault)
    stack.follow_clock(speed=args.speed)
    inverter = Inverter(stack, PROFILES[args.master], args.master_period) if args.master else None
    options = {"baudrate": args.baudrate, "latency": args.latency, "inverter": inverter}
    responder: Responder = (
        ConsoleResponder(stack, firmware=args.firmware) if args.console else Rs485Responder(stack)
    )
    server: PtySimulator | TcpSimulator
    if args.pty:
        server = PtySimulator(responder, args.pty, **options)
    else:
        server = TcpSimulator(responder, *args.tcp, gateway=args.gateway, **options)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server.start()
    except OSError as error:
        print(f"{parser.prog}: error: cannot listen: {error}", file=sys.stderr)
        return USAGE_ERROR
    addresses = " ".join(f"0x{m.address:02X}" for m in stack.modules)
    print(f"{','.join(models)} modules at {addresses}", file=sys.stderr, flush=True)
    if isinstance(responder, ConsoleResponder):
        print(
            f"the console of group {responder.group}: {responder.prompt} shell, firmware "
            f"{responder.firmware.name}",
            file=sys.stderr,
            flush=True,
        )
    if inverter is not None:
        print(
            f"an inverter polls them: {inverter.profile.description} "
            f"(a cycle every {inverter.period:g} s)",
            file=sys.stderr,
            flush=True,
        )
    where = f"{server.link} -> {server.device}" if isinstance(server, PtySimulator) else server.url
    print(f"listening on {where}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
