"""Config file schema and the checks that turn bad input into one line saying what to fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import serial

from pylontech_exporter.config import (
    BankConfig,
    ConfigError,
    banks_from_flags,
    check_port_available,
    check_ports,
    load_config,
    parse_config,
)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pylontech.yml"
    path.write_text(text)
    return str(path)


def test_full_bank_and_defaults(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
banks:
  - name: garage
    port: socket://10.0.0.7:8899
    group: 2
    baudrate: 9600
    timeout: 0.5
    command_gap: 0.1
    modules: 4
    bank_query: off
  - port: /dev/ttyUSB1
""",
        ),
        baudrate=19200,
        timeout=2.0,
    )
    garage, other = config.banks
    assert (garage.name, garage.port, garage.group, garage.modules) == (
        "garage",
        "socket://10.0.0.7:8899",
        2,
        4,
    )
    assert (garage.serial.baudrate, garage.serial.timeout, garage.serial.command_gap) == (
        9600,
        0.5,
        0.1,
    )
    assert garage.bank_query == "off"  # YAML reads bare `off` as False
    # Left out: the name is the group, the serial settings come from the flags' values.
    assert (other.name, other.group, other.modules, other.bank_query) == ("0", 0, None, "auto")
    assert (other.serial.baudrate, other.serial.timeout) == (19200, 2.0)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"bank": []}, "unknown key 'bank'"),
        ({"banks": []}, "non-empty list"),
        ({"banks": [{"port": "/dev/x", "speed": 1}]}, "banks[0]: unknown key 'speed'"),
        ({"banks": [{"group": 1}]}, "banks[0]: `port:` is missing"),
        ({"banks": [{"port": "/dev/x", "group": 8}]}, "banks[0].group: must be an integer 0..7"),
        ({"banks": [{"port": "/dev/x", "group": "1"}]}, "banks[0].group: must be an integer"),
        ({"banks": [{"port": "/dev/x", "baudrate": 0}]}, "banks[0].baudrate: must be a baud rate"),
        ({"banks": [{"port": "/dev/x", "baudrate": "fast"}]}, "banks[0].baudrate"),
        ({"banks": [{"port": 5}]}, "banks[0].port: must be a device path or pyserial URL"),
        (
            {"banks": [{"port": "/dev/x", "timeout": 0}]},
            "timeout: must be more than 0 to 60",
        ),
        (
            {"banks": [{"port": "/dev/x", "command_gap": -1}]},
            "command_gap: must be 0 to 10",
        ),
        (
            {"banks": [{"port": "/dev/x", "timeout": float("inf")}]},
            "60 seconds, got inf",
        ),
        (
            {"banks": [{"port": "/dev/x", "timeout": float("nan")}]},
            "60 seconds, got nan",
        ),
        (
            {"banks": [{"port": "/dev/x", "command_gap": float("nan")}]},
            "10 seconds, got nan",
        ),
        ({"banks": [{"port": "/dev/x", "modules": 17}]}, "banks[0].modules: must be an integer"),
        ({"banks": [{"port": "/dev/x", "bank_query": "maybe"}]}, "one of auto, on, off"),
        (
            {"banks": [{"port": "/dev/x", "name": "a"}, {"port": "/dev/y", "name": "a"}]},
            "bank name 'a' is used twice",
        ),
        (
            {"banks": [{"port": "/dev/x"}, {"port": "/dev/x", "name": "b"}]},
            "port /dev/x group 0 is configured twice",
        ),
        (
            {"banks": [{"port": "/dev/x"}, {"port": "/dev/x", "group": 1, "baudrate": 9600}]},
            "disagree on baudrate",
        ),
        ({"banks": [{"port": "/dev/x", "listen_only": "yes"}]}, "listen_only: must be true or"),
        (
            {"banks": [{"port": "/dev/x", "listen_only": True, "listen_max_age": 0}]},
            "listen_max_age: must be more than 0 to 3600 seconds, got 0",
        ),
        (
            {"banks": [{"port": "/dev/x"}, {"port": "/dev/x", "group": 1, "listen_only": True}]},
            "listen_only",
        ),
    ],
)
def test_bad_documents_say_what_to_fix(document, message):
    with pytest.raises(ConfigError) as error:
        parse_config(document, "banks.yml")
    text = str(error.value)
    assert message in text
    assert text.startswith("banks.yml")
    assert "\n" not in text


def test_yaml_errors_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+: "):
        load_config(write(tmp_path, "banks:\n  - port: [\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "nope.yml"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- port: /dev/x\n"))


def test_banks_from_flags_one_bank_per_group():
    config = banks_from_flags("/dev/ttyUSB0", [1, 3, 1], baudrate=9600)
    assert [(b.name, b.group, b.serial.baudrate) for b in config.banks] == [
        ("1", 1, 9600),
        ("3", 3, 9600),
    ]
    assert config.banks[0].serial is config.banks[1].serial  # one connection
    with pytest.raises(ConfigError, match=r"--serial\.baudrate"):
        banks_from_flags("/dev/ttyUSB0", [0], baudrate=0)
    with pytest.raises(ConfigError, match="--group"):
        banks_from_flags("/dev/ttyUSB0", [9])


def test_port_checks(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_port_available(str(tmp_path / "ttyUSB9"))
    regular = tmp_path / "file"
    regular.write_text("")
    with pytest.raises(ConfigError, match="not a character device"):
        check_port_available(str(regular))
    check_port_available("socket://127.0.0.1:1")  # gateways are not checked at start
    master, slave = os.openpty()
    try:
        device = os.ttyname(slave)
        check_port_available(device)  # free: fine
        holder = serial.Serial(device, exclusive=True)
        try:
            with pytest.raises(ConfigError, match="in use by another program"):
                check_port_available(device)
        finally:
            holder.close()
    finally:
        os.close(master)
        os.close(slave)


def test_listen_only_banks_from_yaml_and_flags():
    config = parse_config(
        {"banks": [{"port": "/dev/x", "listen_only": True}, {"port": "/dev/y", "name": "b"}]},
        "banks.yml",
        listen_max_age=12.0,
    )
    heard, polled = (b.serial for b in config.banks)
    assert (heard.listen_only, heard.listen_max_age, heard.source) == (True, 12.0, "rs485-listen")
    assert (polled.listen_only, polled.source) == (False, "rs485")
    flags = banks_from_flags("/dev/x", [0, 1], listen_only=True, listen_max_age=5)
    assert {b.serial.source for b in flags.banks} == {"rs485-listen"}
    with pytest.raises(ConfigError, match=r"--listen\.max-age: must be more than 0 to 3600"):
        banks_from_flags("/dev/x", [0], listen_only=True, listen_max_age=0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "banks:\n  - port: /dev/ttyUSB0\nbanks:\n  - port: /dev/ttyUSB1\n",
            "line 3: key 'banks' given twice (first at line 1)",
        ),
        (
            "banks:\n  - port: /dev/ttyUSB0\n    group: 1\n    port: /dev/ttyUSB1\n",
            "line 4: key 'port' given twice (first at line 2)",
        ),
    ],
)
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, text, message):
    """The second of two keys must not silently win (a bank read from the wrong port)."""
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert message in str(error.value) and "\n" not in str(error.value)


def _two_banks(first: str, second: str) -> list[BankConfig]:
    document = {"banks": [{"name": "a", "port": first}, {"name": "b", "port": second, "group": 1}]}
    return parse_config(document, "banks.yml").banks


@pytest.mark.parametrize(
    ("first", "second", "shown"),
    [
        ("socket://127.0.0.1:4001", "socket://localhost:4001", "socket://127.0.0.1:4001"),
        ("socket://127.0.0.1:4001", "socket://127.0.0.1:4001/", "socket://127.0.0.1:4001"),
        ("socket://127.0.0.1:4001", "rfc2217://127.0.0.1:4001", "rfc2217://127.0.0.1:4001"),
        ("rfc2217://localhost:4001", "socket://127.0.0.1:4001", "socket://127.0.0.1:4001"),
        ("socket://127.0.0.1:4001", "socket://[::ffff:127.0.0.1]:4001", "127.0.0.1:4001"),
        ("socket://[::ffff:7f00:1]:4001", "rfc2217://127.1:4001", "127.0.0.1:4001"),
        ("socket://[::1]:4001", "socket://[0:0::1]:4001", "socket://[::1]:4001"),
    ],
)
def test_one_gateway_port_under_two_names_is_refused(first, second, shown):
    """Two masters on one bus, or a bank down forever waiting for its own line."""
    with pytest.raises(ConfigError) as error:
        check_ports(_two_banks(first, second))
    message = str(error.value)
    assert f"ports {first} and {second} are the same port" in message, message
    assert shown in message and "\n" not in message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("socket://127.0.0.1:4001", "socket://127.0.0.1:4002"),
        ("socket://127.0.0.1:4001", "rfc2217://127.0.0.2:4001"),
        ("socket://[::1]:4001", "socket://[::ffff:127.0.0.1]:4002"),
    ],
)
def test_two_gateway_ports_are_two_ports(first, second):
    check_ports(_two_banks(first, second))


def test_a_device_and_a_symlink_to_it_are_one_port(tmp_path):
    master, slave = os.openpty()
    try:
        device = os.ttyname(slave)
        link = tmp_path / "ttyPylontech"
        link.symlink_to(device)
        with pytest.raises(ConfigError, match=f"are the same port \\({device}\\)"):
            check_ports(_two_banks(device, str(link)))
    finally:
        os.close(master)
        os.close(slave)
