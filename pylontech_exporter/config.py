"""Exporter configuration: banks to read, and the checks that turn bad input into one
line that says what to fix.

A *bank* is one group of modules (one master and its slaves) on one serial port. Several
banks may share a port (groups 1..7 behind an LV hub); they then share one client, so
their serial settings must agree.

YAML schema (``--config.file``)::

    banks:
      - name: garage          # label value of `bank`; default: the group number
        port: /dev/ttyUSB0    # device path or pyserial URL (socket://host:port, rfc2217://...)
        group: 0              # 0..7, DIP switches 2-4 of the master; default 0
        baudrate: 115200      # default: --serial.baudrate
        timeout: 1.0          # seconds a response may stay silent; default: --serial.timeout
        command_gap: 0.0      # pause between requests; default: --serial.command-gap
        modules: 3            # fixed module count: skips discovery; default: discover
        bank_query: auto      # auto | on | off: bank-wide (FF) reads of 0x42/0x44
        listen_only: false    # true: an inverter is the master; listen, never send
        listen_max_age: 30    # listen-only: readings older than this are not exported
        protocol: rs485       # rs485 | console (the RS232 console); default: --serial.protocol
        console_wakeup: false # console: switch an old 1200-baud console to baudrate first
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .models import MAX_MODULES_PER_GROUP
from .yamlfile import read_yaml

DEFAULT_BAUDRATE = 115200
DEFAULT_TIMEOUT = 1.0
DEFAULT_COMMAND_GAP = 0.0
BANK_QUERY_MODES = ("auto", "on", "off")
#: What a serial line can be asked: pyserial's own limit on Linux is 4 Mbaud.
MAX_BAUDRATE = 4_000_000
#: Longer waits are a typo, not a setting: a scrape would never end in time.
MAX_TIMEOUT = 60.0
MAX_COMMAND_GAP = 10.0
#: Listen-only: a reading heard longer ago than this is not exported. Inverters poll
#: every 1 to 10 s; 30 s is three cycles of the slowest, so one lost answer or two do
#: not take a module down, yet a silent bus shows within half a minute.
DEFAULT_LISTEN_MAX_AGE = 30.0
MAX_LISTEN_MAX_AGE = 3600.0
#: The URL schemes a port may have (a path has none).
URL_SCHEMES = ("socket", "rfc2217")
#: What a port may speak: RS485 protocol V3.3, or the RS232 console's text shell.
PROTOCOLS = ("rs485", "console")
#: The console's rate on current firmware (old firmware starts at 1200: console_wakeup).
CONSOLE_BAUDRATE = 115200


def shown(value: Any) -> str:
    """``repr(value)`` for a message, cut to a readable length (a value may be huge)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class SerialSettings:
    """How to talk to one port. Banks on the same port share these."""

    port: str
    baudrate: int = DEFAULT_BAUDRATE
    timeout: float = DEFAULT_TIMEOUT
    command_gap: float = DEFAULT_COMMAND_GAP
    #: Which protocol the line speaks.
    protocol: str = "rs485"
    #: Another device is the bus master: listen, never send.
    listen_only: bool = False
    #: Listen-only: seconds a reading heard stays exported.
    listen_max_age: float = DEFAULT_LISTEN_MAX_AGE
    #: Console: switch an old 1200-baud console to ``baudrate`` when no prompt answers.
    console_wakeup: bool = False

    @property
    def source(self) -> str:
        """Which source reads the line (a key of ``poller.SOURCES``)."""
        return f"{self.protocol}-listen" if self.listen_only else self.protocol


@dataclass(frozen=True)
class BankConfig:
    """One group of modules on one port."""

    name: str
    serial: SerialSettings
    group: int = 0
    #: Fixed module count; ``None`` means discover.
    modules: int | None = None
    #: ``auto``: use the bank-wide query while the firmware answers it; ``on``: only
    #: bank-wide; ``off``: only per-module.
    bank_query: str = "auto"

    @property
    def port(self) -> str:
        return self.serial.port


@dataclass
class Config:
    """Everything the exporter needs besides its web settings."""

    banks: list[BankConfig] = field(default_factory=list)
    #: Where the banks came from, for messages: a file name or "command line".
    source: str = "command line"


# --- value checks --------------------------------------------------------------------------


def check_group(value: Any, where: str = "group") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 7:
        raise ConfigError(
            f"{where}: must be an integer 0..7 (DIP switches 2-4 of the master), got {shown(value)}"
        )
    return value


def check_baudrate(value: Any, where: str = "baudrate") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_BAUDRATE:
        raise ConfigError(
            f"{where}: must be a baud rate such as 115200 (DIP switch 1 off) "
            f"or 9600 (on), got {shown(value)}"
        )
    return value


def check_seconds(value: Any, where: str, *, allow_zero: bool, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: must be a number of seconds, got {shown(value)}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or value > maximum:
        low = "0" if allow_zero else "more than 0"
        raise ConfigError(f"{where}: must be {low} to {maximum:g} seconds, got {shown(value)}")
    return float(value)


def check_port(value: Any, where: str = "port") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"{where}: must be a device path or pyserial URL such as /dev/ttyUSB0 "
            f"or socket://10.0.0.7:8899, got {shown(value)}"
        )
    return value.strip()


def _check_modules(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_MODULES_PER_GROUP
    ):
        raise ConfigError(
            f"{where}: must be an integer 1..{MAX_MODULES_PER_GROUP} or left out "
            f"to discover the modules, got {shown(value)}"
        )
    return value


def _check_bank_query(value: Any, where: str) -> str:
    # YAML 1.1 reads bare on/off as booleans.
    if value is True:
        return "on"
    if value is False:
        return "off"
    if value not in BANK_QUERY_MODES:
        raise ConfigError(f"{where}: must be one of auto, on, off, got {shown(value)}")
    return str(value)


def _check_max_age(value: Any, where: str) -> float:
    return check_seconds(value, where, allow_zero=False, maximum=MAX_LISTEN_MAX_AGE)


def check_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: must be true or false, got {shown(value)}")
    return value


def check_protocol(value: Any, where: str = "protocol") -> str:
    if value not in PROTOCOLS:
        raise ConfigError(
            f"{where}: must be rs485 (the RS485 port) or console (the RS232 console port), "
            f"got {shown(value)}"
        )
    return str(value)


def _check_name(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise ConfigError(f"{where}: must be a non-empty string, got {shown(value)}")
    return str(value).strip()


# --- building a Config ---------------------------------------------------------------------

_BANK_KEYS = (
    "name",
    "port",
    "group",
    "baudrate",
    "timeout",
    "command_gap",
    "modules",
    "bank_query",
    "listen_only",
    "listen_max_age",
    "protocol",
    "console_wakeup",
)


def check_banks(banks: list[BankConfig], source: str) -> list[BankConfig]:
    """Rules that span banks: unique names, unique (port, group), one set of serial
    settings per port."""
    if not banks:
        raise ConfigError(f"{source}: no banks configured; add at least one under `banks:`")
    names: set[str] = set()
    seen: set[tuple[str, int]] = set()
    per_port: dict[str, SerialSettings] = {}
    for bank in banks:
        if bank.name in names:
            raise ConfigError(f"{source}: bank name {bank.name!r} is used twice; names must differ")
        names.add(bank.name)
        if (bank.port, bank.group) in seen:
            raise ConfigError(
                f"{source}: port {bank.port} group {bank.group} is configured twice; "
                "each group of a port is one bank"
            )
        seen.add((bank.port, bank.group))
        other = per_port.setdefault(bank.port, bank.serial)
        if other != bank.serial:
            raise ConfigError(
                f"{source}: banks on port {bank.port} disagree on baudrate/timeout/"
                "command_gap/listen_only/listen_max_age/protocol; banks sharing a port share one "
                "connection, give them the same settings"
            )
        if bank.serial.listen_only and bank.serial.protocol != "rs485":
            raise ConfigError(
                f"{source}: bank {bank.name}: listen-only works on the RS485 protocol "
                f"only, not {bank.serial.protocol}"
            )
        if bank.serial.console_wakeup and bank.serial.protocol != "console":
            raise ConfigError(
                f"{source}: bank {bank.name}: the console wakeup is for the console "
                "protocol; give protocol console (--serial.protocol console) or leave it out"
            )
    consoles = [b.port for b in banks if b.serial.protocol == "console"]
    for port in dict.fromkeys(consoles):
        if consoles.count(port) > 1:
            raise ConfigError(
                f"{source}: port {port} is a console and lists {consoles.count(port)} banks; "
                "a console shows one stack: configure one bank on it (one --group)"
            )
    return banks


def banks_from_flags(
    port: str,
    groups: list[int],
    *,
    baudrate: int = DEFAULT_BAUDRATE,
    timeout: float = DEFAULT_TIMEOUT,
    command_gap: float = DEFAULT_COMMAND_GAP,
    modules: int | None = None,
    listen_only: bool = False,
    listen_max_age: float = DEFAULT_LISTEN_MAX_AGE,
    protocol: str = "rs485",
    console_wakeup: bool = False,
) -> Config:
    """The banks ``--serial.port`` and ``--group`` describe: one per group, named by it,
    each with ``modules`` modules (None: discover)."""
    serial = SerialSettings(
        port=check_port(port, "--serial.port"),
        baudrate=check_baudrate(baudrate, "--serial.baudrate"),
        timeout=check_seconds(timeout, "--serial.timeout", allow_zero=False, maximum=MAX_TIMEOUT),
        command_gap=check_seconds(
            command_gap, "--serial.command-gap", allow_zero=True, maximum=MAX_COMMAND_GAP
        ),
        listen_only=listen_only,
        listen_max_age=_check_max_age(listen_max_age, "--listen.max-age"),
        protocol=check_protocol(protocol, "--serial.protocol"),
        console_wakeup=console_wakeup,
    )
    banks = [
        BankConfig(
            name=str(g),
            serial=serial,
            group=check_group(g, "--group"),
            modules=_check_modules(modules, "--modules"),
        )
        for g in dict.fromkeys(groups)
    ]
    return Config(banks=check_banks(banks, "command line"))


def load_config(
    path: str,
    *,
    baudrate: int = DEFAULT_BAUDRATE,
    timeout: float = DEFAULT_TIMEOUT,
    command_gap: float = DEFAULT_COMMAND_GAP,
    listen_only: bool = False,
    listen_max_age: float = DEFAULT_LISTEN_MAX_AGE,
    protocol: str = "rs485",
    console_wakeup: bool = False,
) -> Config:
    """Read and check a YAML config file. The keyword arguments are the defaults for
    banks that leave the setting out (the values of the ``--serial.*`` flags)."""
    document = read_yaml(path, "config file")
    return parse_config(
        document,
        path,
        baudrate=baudrate,
        timeout=timeout,
        command_gap=command_gap,
        listen_only=listen_only,
        listen_max_age=listen_max_age,
        protocol=protocol,
        console_wakeup=console_wakeup,
    )


def parse_config(
    document: Any,
    source: str,
    *,
    baudrate: int = DEFAULT_BAUDRATE,
    timeout: float = DEFAULT_TIMEOUT,
    command_gap: float = DEFAULT_COMMAND_GAP,
    listen_only: bool = False,
    listen_max_age: float = DEFAULT_LISTEN_MAX_AGE,
    protocol: str = "rs485",
    console_wakeup: bool = False,
) -> Config:
    """Check a parsed YAML document (see the module docstring for the schema)."""
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping with a `banks:` list at the top")
    unknown = sorted(str(k) for k in document if k != "banks")
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; the only top-level key is banks")
    entries = document.get("banks")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: `banks:` must be a non-empty list of banks")
    banks = []
    for index, entry in enumerate(entries):
        where = f"{source}: banks[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping with at least `port:`")
        for key in entry:
            if key not in _BANK_KEYS:
                raise ConfigError(
                    f"{where}: unknown key {key!r}; allowed keys are {', '.join(_BANK_KEYS)}"
                )
        if "port" not in entry:
            raise ConfigError(f"{where}: `port:` is missing (device path or pyserial URL)")
        group = check_group(entry.get("group", 0), f"{where}.group")
        serial = SerialSettings(
            port=check_port(entry["port"], f"{where}.port"),
            baudrate=check_baudrate(entry.get("baudrate", baudrate), f"{where}.baudrate"),
            timeout=check_seconds(
                entry.get("timeout", timeout),
                f"{where}.timeout",
                allow_zero=False,
                maximum=MAX_TIMEOUT,
            ),
            command_gap=check_seconds(
                entry.get("command_gap", command_gap),
                f"{where}.command_gap",
                allow_zero=True,
                maximum=MAX_COMMAND_GAP,
            ),
            listen_only=check_bool(entry.get("listen_only", listen_only), f"{where}.listen_only"),
            listen_max_age=_check_max_age(
                entry.get("listen_max_age", listen_max_age), f"{where}.listen_max_age"
            ),
            protocol=check_protocol(entry.get("protocol", protocol), f"{where}.protocol"),
            console_wakeup=check_bool(
                entry.get("console_wakeup", console_wakeup), f"{where}.console_wakeup"
            ),
        )
        banks.append(
            BankConfig(
                name=_check_name(entry.get("name", str(group)), f"{where}.name"),
                serial=serial,
                group=group,
                modules=_check_modules(entry.get("modules"), f"{where}.modules"),
                bank_query=_check_bank_query(
                    entry.get("bank_query", "auto"), f"{where}.bank_query"
                ),
            )
        )
    return Config(banks=check_banks(banks, source), source=source)


# --- can the ports be opened? --------------------------------------------------------------


def is_device_path(port: str) -> bool:
    """True for a local device (``/dev/ttyUSB0``, ``COM3``), False for a pyserial URL."""
    return "://" not in port


def canonical_port(port: str) -> frozenset[str]:
    """The port as the system sees it, to tell two spellings of one port apart from two
    ports: a device path with its symlinks resolved; for a URL every address its host
    resolves to, with the TCP port, whatever the scheme (``socket://`` and ``rfc2217://``
    to one gateway port are one port), an IPv4-mapped IPv6 address as its IPv4 address.
    ConfigError for a URL scheme pyserial is not given here, or a host that does not
    resolve."""
    if is_device_path(port):
        return frozenset({os.path.realpath(port)})
    url = urlsplit(port)
    if url.scheme not in URL_SCHEMES:
        raise ConfigError(
            f"port {port}: unknown URL scheme {url.scheme!r}; use a device path, "
            "socket://HOST:PORT or rfc2217://HOST:PORT"
        )
    try:
        number = url.port
    except ValueError:
        number = None
    if not url.hostname or number is None:
        raise ConfigError(f"port {port}: expected {url.scheme}://HOST:PORT")
    try:
        found = socket.getaddrinfo(url.hostname, number, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise ConfigError(
            f"port {port}: host {url.hostname!r} does not resolve ({error})"
        ) from None
    return frozenset(_host_and_port(str(address[0]), number) for *_, address in found)


def _host_and_port(address: str, number: int) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address}:{number}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return f"[{ip.compressed}]:{number}"
        ip = ip.ipv4_mapped
    return f"{ip}:{number}"


def check_ports(banks: list[BankConfig]) -> None:
    """Every port is usable and named once: a URL resolves, a local device exists and is
    free (opened and closed once), and no two spellings name the same port (a symlink and
    its target, ``localhost`` and ``127.0.0.1``, ``socket://`` and ``rfc2217://`` to one
    gateway port): they would be two masters on one bus."""
    seen: dict[str, str] = {}  # a canonical name: the port first seen with it
    for port in dict.fromkeys(b.port for b in banks):
        names = canonical_port(port)
        same = sorted(names & seen.keys())
        if same:
            where = same[0] if is_device_path(port) else f"{urlsplit(port).scheme}://{same[0]}"
            raise ConfigError(
                f"ports {seen[same[0]]} and {port} are the same port ({where}); "
                "write it the same way for every bank on it"
            )
        seen.update(dict.fromkeys(names, port))
        check_port_available(port)


def check_port_available(port: str) -> None:
    """Open and close a local serial device to find a missing device or one that another
    program holds, before the exporter starts. URLs (TCP gateways) are not checked: a
    gateway that is down now may be up at the next scrape."""
    if not is_device_path(port):
        return
    import serial  # pyserial

    if os.name == "posix":
        try:
            mode = os.stat(port).st_mode
        except FileNotFoundError:
            raise ConfigError(
                f"serial port {port} does not exist: check the cable/adapter "
                "and the --serial.port or `port:` setting"
            ) from None
        except OSError as error:
            raise ConfigError(f"serial port {port}: {error.strerror}") from None
        if not stat.S_ISCHR(mode):
            raise ConfigError(f"serial port {port} is not a character device (a serial port)")
    try:
        handle = serial.Serial(port, exclusive=True) if os.name == "posix" else serial.Serial(port)
    except serial.SerialException as error:
        cause = error.__cause__ or error.__context__
        code = getattr(error, "errno", None) or getattr(cause, "errno", None)
        text = str(error)
        if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in text.lower():
            raise ConfigError(
                f"serial port {port} is in use by another program; stop it "
                "(another exporter, ModemManager, a console) or use another port"
            ) from None
        if code in (errno.EACCES, errno.EPERM):
            raise ConfigError(
                f"serial port {port}: permission denied; add the user to the dialout group"
            ) from None
        raise ConfigError(f"serial port {port} cannot be opened: {text}") from None
    handle.close()
