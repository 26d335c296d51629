"""The command line: every flag and its environment variable, configuration errors,
--config.check, the scan and dump commands, and flags that change what is served."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
import serial
from support import REPO
from support.metrics import expected_readings, key, select
from support.processes import Exporter, clean_env, exporter_command, run_cli
from support.stacks import frozen_stack

from pylontech_exporter import __version__
from pylontech_exporter.cli import build_config, build_parser, env_name, parse_args
from pylontech_exporter.server import parse_listen_address
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.serve import TcpSimulator

# (command, flag arguments, dest, parsed value, the same as environment variable text)
FLAGS = [
    (None, ["--serial.port", "socket://h:1"], "serial_port", "socket://h:1", "socket://h:1"),
    (None, ["--serial.baudrate", "9600"], "serial_baudrate", 9600, "9600"),
    (None, ["--serial.timeout", "0.25"], "serial_timeout", 0.25, "0.25"),
    (None, ["--serial.command-gap", "0.1"], "serial_command_gap", 0.1, "0.1"),
    (None, ["--group", "3", "--group", "5"], "group", [3, 5], "3,5"),
    (None, ["--modules", "4"], "modules", 4, "4"),
    (None, ["--serial.listen-only"], "serial_listen_only", True, "true"),
    (None, ["--listen.max-age", "12.5"], "listen_max_age", 12.5, "12.5"),
    (None, ["--serial.protocol", "console"], "serial_protocol", "console", "console"),
    (None, ["--console.wakeup"], "console_wakeup", True, "true"),
    (None, ["--config.file", "b.yml"], "config_file", "b.yml", "b.yml"),
    (None, ["--simulate"], "simulate", True, "true"),
    (None, ["--simulate.modules", "5"], "simulate_modules", 5, "5"),
    (None, ["--simulate.inverter", "bank"], "simulate_inverter", "bank", "bank"),
    (None, ["--config.check"], "config_check", True, "1"),
    (None, ["--web.listen-address", ":9999"], "web_listen_address", ":9999", ":9999"),
    (None, ["--web.config.file", "w.yml"], "web_config_file", "w.yml", "w.yml"),
    (None, ["--web.telemetry-path", "/m"], "web_telemetry_path", "/m", "/m"),
    (None, ["--web.disable-exporter-metrics"], "web_disable_exporter_metrics", True, "yes"),
    (None, ["--cache.ttl", "0"], "cache_ttl", 0.0, "0"),
    (None, ["--scrape.timeout-offset", "1.5"], "scrape_timeout_offset", 1.5, "1.5"),
    (None, ["--log.level", "debug"], "log_level", "debug", "debug"),
    (None, ["--log.format", "json"], "log_format", "json", "json"),
    ("scan", ["--scan.timeout", "0.1"], "scan_timeout", 0.1, "0.1"),
    ("dump", ["--json"], "json", True, "1"),
    ("dump", ["--dump.timeout", "3"], "dump_timeout", 3.0, "3"),
    ("dump", ["--listen.duration", "4"], "listen_duration", 4.0, "4"),
    ("scan", ["--listen.duration", "2"], "listen_duration", 2.0, "2"),
]
DEFAULTS = {
    "serial_baudrate": 115200,
    "serial_timeout": 1.0,
    "serial_command_gap": 0.0,
    "group": [0],
    "web_listen_address": ":10460",
    "web_telemetry_path": "/metrics",
    "cache_ttl": 5.0,
    "scrape_timeout_offset": None,  # measured
    "modules": None,  # discover
    "log_level": "info",
    "log_format": "logfmt",
    "simulate": False,
    "simulate_modules": 3,
    "serial_listen_only": False,
    "listen_max_age": 30.0,
    "simulate_inverter": "full",
    "serial_protocol": "rs485",
    "console_wakeup": False,
}


def _cmd(command):
    return [command] if command else []


@pytest.mark.parametrize(("command", "argv", "dest", "value", "env_text"), FLAGS)
def test_each_flag_and_its_environment_variable(command, argv, dest, value, env_text):
    flag = argv[0]
    assert getattr(parse_args([*_cmd(command), *argv], environ={}), dest) == value
    env = {env_name(flag): env_text}
    assert getattr(parse_args(_cmd(command), environ=env), dest) == value
    # The flag wins over the environment.
    other = {env_name(flag): "7" if value != 7 else "8"} if not isinstance(value, bool) else {}
    if other and dest not in ("log_level", "log_format", "simulate_inverter", "serial_protocol"):
        assert getattr(parse_args([*_cmd(command), *argv], environ=other), dest) == value


def test_every_flag_is_covered_and_defaults():
    covered = {(c, a[0]) for c, a, *_ in FLAGS}
    for command in (None, "scan", "dump"):
        for action in build_parser(command)._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--version"):
                    assert (command, option) in covered or (None, option) in covered, option
    args = parse_args([], environ={})
    for dest, value in DEFAULTS.items():
        assert getattr(args, dest) == value, dest
    assert env_name("--serial.command-gap") == "PYLONTECH_EXPORTER_SERIAL_COMMAND_GAP"


def test_bad_environment_value_names_the_variable(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args([], environ={"PYLONTECH_EXPORTER_SERIAL_BAUDRATE": "fast"})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "PYLONTECH_EXPORTER_SERIAL_BAUDRATE" in err and "positive integer" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--serial.baudrate", "0"], "--serial.baudrate: expected a positive integer"),
        (["--group", "8"], "--group: expected a group number 0..7"),
        (["--serial.timeout", "0"], "--serial.timeout: expected a positive number"),
        (["--log.format", "xml"], "--log.format: expected one of logfmt, json"),
        (["--cache.ttl", "-1"], "--cache.ttl: expected a number of seconds 0..3600"),
        (["--cache.ttl", "inf"], "--cache.ttl: expected a number of seconds 0..3600"),
        (["--cache.ttl", "nan"], "--cache.ttl: expected a number of seconds 0..3600"),
        (["--serial.timeout", "inf"], "--serial.timeout: expected a positive number"),
        (["--serial.timeout", "nan"], "--serial.timeout: expected a positive number"),
        (["--serial.command-gap", "inf"], "--serial.command-gap: expected a number"),
        (["--scrape.timeout-offset", "nan"], "--scrape.timeout-offset: expected a number"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_flag_values_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv, environ={})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_listen_address_forms():
    assert parse_listen_address(":10460") == ("", 10460)
    assert parse_listen_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_listen_address("[::1]:9000") == ("::1", 9000)
    for bad in ("10460", "host:port", "::1:9000", ":70000"):
        with pytest.raises(ValueError, match=r"--web\.listen-address"):
            parse_listen_address(bad)


# --- the program ---------------------------------------------------------------------------


def test_no_source_exits_2_naming_all_three():
    result = run_cli()
    assert result.returncode == 2
    assert "--serial.port" in result.stderr
    assert "--config.file" in result.stderr
    assert "--simulate" in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_version_and_help():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"pylontech-exporter {__version__}"
    result = run_cli("--help")
    assert result.returncode == 0
    for command, argv, *_ in FLAGS:
        if command is None:
            assert argv[0] in result.stdout
    assert "PYLONTECH_EXPORTER_" in result.stdout and "scan" in result.stdout


def test_simulator_version(capsys):
    from pylontech_exporter.simulator.cli import main as simulator

    with pytest.raises(SystemExit) as exited:
        simulator(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"pylontech-simulator {__version__}"


def test_config_check_ok_with_env_and_flag_precedence():
    env = clean_env(
        PYLONTECH_EXPORTER_SERIAL_PORT="socket://127.0.0.1:8899",
        PYLONTECH_EXPORTER_SERIAL_BAUDRATE="9600",
        PYLONTECH_EXPORTER_GROUP="1,2",
    )
    result = run_cli("--config.check", env=env)
    assert result.returncode == 0, result.stderr
    assert "2 bank(s)" in result.stdout and "9600 baud" in result.stdout
    assert "group 1" in result.stdout and "group 2" in result.stdout
    result = run_cli("--config.check", "--serial.baudrate", "115200", "--group", "3", env=env)
    assert result.returncode == 0
    assert "1 bank(s)" in result.stdout and "115200 baud" in result.stdout
    assert "group 3" in result.stdout


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("banks:\n  - port: socket://h:1\n    baud: 9600\n", "unknown key 'baud'"),
        ("banks:\n  - port: socket://h:1\n    group: one\n", "group: must be an integer 0..7"),
        ("banks:\n  - port: socket://h:1\n    group: 8\n", "group: must be an integer 0..7"),
        ("banks:\n  - port: socket://h:1\n    baudrate: 0\n", "baudrate: must be a baud rate"),
        ("banks:\n  - port: /dev/ttyNOPE42\n", "serial port /dev/ttyNOPE42 does not exist"),
        ("banks: [\n", "not valid YAML"),
    ],
)
def test_config_check_errors_exit_2(tmp_path, yaml_text, message):
    path = tmp_path / "banks.yml"
    path.write_text(yaml_text)
    result = run_cli("--config.file", str(path), "--config.check")
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_config_check_valid_file(tmp_path):
    path = tmp_path / "banks.yml"
    path.write_text("banks:\n  - name: garage\n    port: socket://10.0.0.7:8899\n    group: 1\n")
    result = run_cli("--config.file", str(path), "--config.check")
    assert result.returncode == 0
    assert (
        "garage (socket://10.0.0.7:8899 group 1, rs485 at 115200 baud, modules discovered)"
        in result.stdout
    )


@pytest.mark.parametrize(
    ("argv", "summary"),
    [
        (
            ["--serial.protocol", "console", "--console.wakeup"],
            "group 0, console at 115200 baud (wakeup from 1200), modules discovered)",
        ),
        (
            ["--serial.listen-only", "--modules", "3", "--serial.baudrate", "9600"],
            "group 0, rs485 listen-only at 9600 baud, 3 module(s))",
        ),
    ],
)
def test_config_check_says_protocol_listen_only_and_module_count(argv, summary):
    result = run_cli("--config.check", "--serial.port", "socket://127.0.0.1:9", *argv)
    assert result.returncode == 0, result.stderr
    assert f"0 (socket://127.0.0.1:9 {summary}" in result.stdout


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--simulate", "--simulate.inverter", "bank"], {}),
        (["--serial.port", "socket://127.0.0.1:9", "--simulate.inverter", "bank"], {}),
        (["--simulate"], {"PYLONTECH_EXPORTER_SIMULATE_INVERTER": "bank"}),
    ],
)
def test_simulate_inverter_without_listen_only_exits_2(argv, env):
    result = run_cli("--config.check", *argv, env=clean_env(**env))
    assert result.returncode == 2
    assert "--simulate.inverter" in result.stderr and "--serial.listen-only" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_serial_port_in_use_and_missing_exit_2():
    master, slave = os.openpty()
    device = os.ttyname(slave)
    holder = serial.Serial(device, exclusive=True)
    try:
        result = run_cli("--serial.port", device)
    finally:
        holder.close()
        os.close(master)
        os.close(slave)
    assert result.returncode == 2
    assert f"serial port {device} is in use by another program" in result.stderr
    result = run_cli("--serial.port", "/dev/ttyUSB-missing")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_conflicting_sources_exit_2():
    result = run_cli("--simulate", "--serial.port", "socket://h:1")
    assert result.returncode == 2 and "--simulate" in result.stderr
    result = run_cli("--serial.port", "socket://h:1", "--config.file", "x.yml")
    assert result.returncode == 2 and "both given" in result.stderr


def test_listen_address_in_use_exit_2():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--simulate", "--web.listen-address", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert "cannot listen" in result.stderr


# --- scan and dump -------------------------------------------------------------------------


def test_scan_lists_every_module_with_serial_and_firmware():
    stack = frozen_stack(modules=2, groups=2, model="US3000C")  # groups 1 and 2
    with TcpSimulator(Rs485Responder(stack), latency=0) as tcp:
        result = run_cli(
            "scan", "--serial.port", tcp.url, "--group", "1", "--group", "2",
            "--scan.timeout", "0.05",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == [
        "port",
        "address",
        "group",
        "module",
        "serial",
        "number",
        "firmware",
    ]
    rows = [line.split() for line in lines[1:]]
    expected = [
        [tcp.url, f"0x{m.address:02X}", str(m.group), str(m.address - 0x10 * m.group - 1),
         m.serial_number, m.model.mainline_version, f"({m.model.manufacturer_version})"]
        for m in stack.modules
    ]  # fmt: skip
    assert rows == expected
    assert "scanning" in result.stderr and "4 module(s) found" in result.stderr
    for m in stack.modules:
        assert f"0x{m.address:02X}: found {m.serial_number}" in result.stderr


def test_scan_with_nothing_answering_exits_1():
    stack = frozen_stack(modules=1)
    stack.remove_module(0x02)
    with TcpSimulator(Rs485Responder(stack), latency=0) as tcp:
        result = run_cli("scan", "--serial.port", tcp.url, "--group", "0", "--scan.timeout", "0.02")
    assert result.returncode == 1
    assert "no battery answered" in result.stderr


@pytest.mark.parametrize(
    ("mode", "hint"),
    [
        (["--serial.protocol", "console"], "console cable"),
        (["--serial.listen-only", "--listen.duration", "0.3"], "that the inverter polls"),
    ],
)
def test_scan_finding_nothing_gives_the_hint_of_its_mode_only(mode, hint):
    # An RS485 stack with no master: the console's pwr gets no answer, a listener hears nothing.
    with TcpSimulator(Rs485Responder(frozen_stack(modules=1)), latency=0) as tcp:
        result = run_cli("scan", "--serial.port", tcp.url, "--serial.timeout", "0.2", *mode)
    assert result.returncode == 1, result.stderr
    assert hint in result.stderr
    assert "no other master" not in result.stderr and "DIP switch" not in result.stderr


def test_dump_of_a_silent_bank_says_what_the_time_went_on():
    stack = frozen_stack(modules=1)
    stack.remove_module(0x02)
    with TcpSimulator(Rs485Responder(stack), latency=0) as tcp:
        result = run_cli("dump", "--serial.port", tcp.url, "--serial.timeout", "0.3")
    assert result.returncode == 1
    assert "DOWN (no module answered discovery), not read" in result.stdout
    took = re.search(r"dump: ([0-9.]+) s in all: ([0-9.]+) s finding the modules", result.stderr)
    assert took, result.stderr
    # Discovery waited out --serial.timeout at least once before it gave up.
    assert float(took[1]) >= float(took[2]) >= 0.3


def test_dump_table_and_json():
    stack = frozen_stack(modules=3, model="US3000C")
    with TcpSimulator(Rs485Responder(stack), latency=0) as tcp:
        table = run_cli("dump", "--serial.port", tcp.url, "--serial.timeout", "0.2")
        as_json = run_cli("dump", "--json", "--serial.port", tcp.url, "--serial.timeout", "0.2")
    assert table.returncode == 0, table.stderr
    assert "bank 0 (group 0" in table.stdout and ": up" in table.stdout
    for m in stack.modules:
        v = m.values()
        assert m.serial_number in table.stdout
        assert f"{v.voltage:.3f} V" in table.stdout
        assert f"{v.state_of_charge * 100:.1f}%" in table.stdout
    assert as_json.returncode == 0
    data = json.loads(as_json.stdout)
    (bank,) = data["banks"]
    assert bank["up"] is True and bank["name"] == "0"
    for entry, m in zip(bank["modules"], stack.modules):
        v = m.values()
        assert entry["up"] is True and entry["serial_number"] == m.serial_number
        assert entry["values"]["cell_voltages"] == list(v.cell_voltages)
        assert entry["values"]["current"] == v.current
        assert entry["alarms"]["cell_states"] == [s.name.lower() for s in m.alarms().cell_states]
        assert entry["management"]["charge_voltage_limit"] == m.management().charge_voltage_limit


# --- flags that change what is served ------------------------------------------------------


@pytest.fixture
def tcp():
    stack = frozen_stack(modules=2, model="US3000C")
    with TcpSimulator(Rs485Responder(stack), latency=0) as server:
        server.stack_ = stack
        yield server


def test_telemetry_path_json_logs_and_no_exporter_metrics(tcp):
    with Exporter(
        "--serial.port", tcp.url, "--serial.timeout", "0.2", "--web.telemetry-path", "/pylontech",
        "--log.format", "json", "--log.level", "debug", "--web.disable-exporter-metrics",
        "--cache.ttl", "7",
    ) as exporter:  # fmt: skip
        status, _, body = exporter.get("/pylontech")
        assert status == 200
        assert exporter.get("/metrics")[0] == 404
        _, _, page = exporter.get("/")
        assert "href='/pylontech'" in page.decode()
    text = body.decode()
    assert "pylontech_up" in text
    assert "(read at most every 7 s, cached in between)" in text
    assert "process_cpu_seconds_total" not in text and "python_info" not in text
    records = [json.loads(line) for line in exporter.lines if line.startswith("{")]
    assert records and len(records) == len(exporter.lines)
    assert {"ts", "level", "msg"} <= set(records[0])
    assert any(r["level"] == "debug" for r in records)


def test_default_exporter_metrics_logfmt_and_level(tcp):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Exporter(
        "--serial.port", tcp.url, "--serial.timeout", "0.2", "--log.level", "warn",
        "--web.listen-address", f"127.0.0.1:{port}",
    ) as exporter:  # fmt: skip
        _, _, body = exporter.get("/metrics")
    assert "process_cpu_seconds_total" in body.decode() or "python_info" in body.decode()
    assert not [line for line in exporter.lines if "level=info" in line or "level=debug" in line]
    with Exporter("--serial.port", tcp.url, "--serial.timeout", "0.2") as exporter:
        exporter.get("/metrics")
    assert any(line.startswith("ts=") and " level=info " in line for line in exporter.lines)


def test_environment_configures_the_running_exporter(tcp):
    env = clean_env(
        PYLONTECH_EXPORTER_SERIAL_PORT=tcp.url,
        PYLONTECH_EXPORTER_SERIAL_TIMEOUT="0.2",
        PYLONTECH_EXPORTER_CACHE_TTL="0",
        PYLONTECH_EXPORTER_WEB_TELEMETRY_PATH="/env-metrics",
    )
    with Exporter(env=env) as exporter:
        status, _, body = exporter.get("/env-metrics")
    assert status == 200
    assert (
        "# HELP pylontech_cell_voltage_volts Cell voltage (read at every scrape)" in body.decode()
    )


def test_command_gap_slows_the_bus(tcp):
    with Exporter(
        "--serial.port", tcp.url, "--serial.timeout", "0.2", "--serial.command-gap", "0.1",
        "--cache.ttl", "0",
    ) as exporter:  # fmt: skip
        exporter.scrape()
        started = time.monotonic()
        samples = exporter.scrape()
        elapsed = time.monotonic() - started
    # FF 0x42, FF 0x44, 2 x 0x92: at least 3 gaps of 0.1 s between the 4 requests
    assert elapsed >= 0.3
    assert samples[key("pylontech_up", bank="0")] == 1


def test_simulate_with_groups_and_module_count():
    with Exporter(
        "--simulate", "--group", "1", "--group", "2", "--simulate.modules", "2",
        "--cache.ttl", "0", "--serial.timeout", "0.2",
    ) as exporter:  # fmt: skip
        samples = exporter.scrape()
    up = select(samples, "pylontech_module_up")
    assert sorted((dict(k[1])["bank"], dict(k[1])["module"]) for k in up) == [
        ("1", "1"), ("1", "2"), ("2", "1"), ("2", "2"),
    ]  # fmt: skip
    assert all(v == 1 for v in up.values())


def test_expected_readings_helper_matches_one_known_value(tcp):
    # Guard for the helper the end-to-end tests rely on: a value set by hand shows up.
    module = tcp.stack_.module(0x02)
    module.cell_voltages[0] = 3.123
    expected = expected_readings(tcp.stack_, "0", 0)
    assert expected[key("pylontech_cell_voltage_volts", bank="0", module=1, cell=1)] == 3.123
    with Exporter("--serial.port", tcp.url, "--serial.timeout", "0.2") as exporter:
        samples = exporter.scrape()
    assert samples[key("pylontech_cell_voltage_volts", bank="0", module="1", cell="1")] == 3.123


def test_default_scan_range_covers_every_group_and_position():
    from pylontech_exporter.cli import SCAN_RANGE
    from pylontech_exporter.models import module_address

    addresses = range(*SCAN_RANGE)
    for group in range(8):
        for position in range(1, 17):
            assert module_address(group, position) in addresses
    assert 0 not in addresses and 0x82 not in addresses


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--serial.baudrate", "99999999999"], "--serial.baudrate: must be a baud rate"),
        (["--serial.command-gap", "1e300"], "--serial.command-gap: must be 0 to 10 seconds"),
        (["--serial.timeout", "600"], "--serial.timeout: must be more than 0 to 60 seconds"),
        (["--serial.port", "tcp://127.0.0.1:1"], "unknown URL scheme 'tcp'"),
        (["--serial.port", "socket://nohost.invalid:1"], "'nohost.invalid' does not resolve"),
        (["--serial.port", "socket://127.0.0.1"], "expected socket://HOST:PORT"),
        (["--web.telemetry-path", "/metrics?x"], "--web.telemetry-path '/metrics?x'"),
        (["--web.telemetry-path", "/-/ready"], "--web.telemetry-path '/-/ready'"),
        (["--simulate", "--simulate.modules", "17"], "expected a module count 1..16"),
        (["--modules", "17"], "expected a module count 1..16"),
        (["--config.file", "x.yml", "--modules", "3"], "--modules applies to --serial.port"),
    ],
)
def test_values_out_of_range_exit_2_with_one_line(argv, message):
    if "--serial.port" not in argv and "--simulate" not in argv and "--config.file" not in argv:
        argv = ["--serial.port", "socket://127.0.0.1:1", *argv]
    result = run_cli(*argv, "--config.check")
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_one_port_under_two_names_is_refused(tmp_path):
    link = tmp_path / "ttyPylontech"
    link.symlink_to("/dev/null")
    config = tmp_path / "banks.yml"
    config.write_text(
        "banks:\n"
        "  - {name: a, port: 'socket://127.0.0.1:8899'}\n"
        "  - {name: b, port: 'socket://localhost:8899', group: 1}\n"
    )
    result = run_cli("--config.file", str(config), "--config.check")
    assert result.returncode == 2
    assert "are the same port (socket://127.0.0.1:8899)" in result.stderr


def test_the_command_may_come_after_the_flags():
    for argv in (
        ["scan", "--serial.port", "socket://h:1"],
        ["--serial.port", "socket://h:1", "scan"],
        ["--log.level", "debug", "scan", "--scan.timeout", "0.1"],
    ):
        assert parse_args(argv, environ={}).command == "scan", argv
    # A flag's value that happens to be a command's name is a value.
    assert parse_args(["--serial.port", "dump"], environ={}).command is None


def test_ctrl_c_ends_a_scan_cleanly_with_what_was_found(stack):
    stack.freeze()
    with TcpSimulator(Rs485Responder(stack), latency=0) as tcp:
        process = subprocess.Popen(
            [*exporter_command("scan", "--serial.port", tcp.url, "--scan.timeout", "0.3")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        assert process.stderr is not None
        found = 0
        for line in process.stderr:  # the announcement, then one line per module found
            # 128 addresses (0x02..0x81) at 0.3 s each when silent.
            assert ("128 addresses" in line and "38 s or more" in line) or ": found " in line, line
            found += ": found " in line
            if found == len(stack.modules):
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 130
    assert "Traceback" not in err and "interrupted; found so far" in err
    for module in stack.modules:
        assert module.serial_number in out


def _env_file(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line and not line.startswith("#") and "=" in line and not line.startswith("ARGS")
    )


def test_the_shipped_environment_file_works_as_shipped_and_with_the_config_file_line(
    tmp_path,
):
    shipped = (REPO / "deploy" / "systemd" / "pylontech-exporter.env").read_text()
    config = tmp_path / "banks.yml"
    config.write_text("banks:\n  - {name: house, port: 'socket://127.0.0.1:8899'}\n")
    as_shipped = build_config(parse_args([], environ=_env_file(shipped)))
    assert [(b.port, b.serial.baudrate) for b in as_shipped.banks] == [("/dev/pylontech", 115200)]
    enabled = shipped.replace(
        "#PYLONTECH_EXPORTER_CONFIG_FILE=/etc/pylontech-exporter.yml",
        f"PYLONTECH_EXPORTER_CONFIG_FILE={config}",
    )
    result = run_cli("--config.check", env=clean_env(**_env_file(enabled)))
    assert result.returncode == 0, result.stderr
    assert "1 bank(s): house (socket://127.0.0.1:8899" in result.stdout
    # Both as flags: one of them is a mistake, said so.
    both = run_cli("--serial.port", "socket://127.0.0.1:1", "--config.file", str(config))
    assert both.returncode == 2 and "both given" in both.stderr


# --- what the exporter says it does --------------------------------------------------------


def test_ready_says_what_a_bank_is_waiting_for():
    """Discovering the modules, or (known from --modules, or just discovered) reading their
    static data: /-/ready names which, since only the first is discovery."""
    from pylontech_exporter.bank import Bank
    from pylontech_exporter.cli import not_ready
    from pylontech_exporter.config import BankConfig, SerialSettings

    discovered = Bank(BankConfig(name="a", serial=SerialSettings(port="socket://h:1")))
    fixed = Bank(BankConfig(name="b", serial=SerialSettings(port="socket://h:1"), modules=3))
    assert not_ready([discovered, fixed]) == "bank a is still being discovered"
    assert not_ready([fixed]) == (
        "bank b is reading the static data (serial numbers, firmware, limits) of its 3 module(s)"
    )
    fixed.bank_static_at = 1.0
    for module in fixed.modules.values():
        module.static_at = 1.0
    assert not_ready([fixed]) is None


def test_ready_with_modules_given_reads_static_data_not_discovery():
    """The running exporter, ``--modules 3`` on a gateway that accepts and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with Exporter(
            "--serial.port", f"socket://127.0.0.1:{port}", "--modules", "3",
            "--serial.timeout", "0.1", ready=False,
        ) as exporter:  # fmt: skip
            status, _, body = exporter.get("/-/ready")
    assert (status, body.decode()) == (
        503,
        "Not ready: bank 0 is reading the static data (serial numbers, firmware, limits) "
        "of its 3 module(s).\n",
    )


def _help(*args: str) -> str:
    result = run_cli(*args, "--help")
    assert result.returncode == 0
    return " ".join(result.stdout.split())  # as argparse wraps it for any terminal width


def test_help_says_what_is_read_when():
    text = _help()
    assert "when Prometheus scrapes" not in text
    assert (
        "From start-up, in the background, it finds the modules of every bank and reads their "
        "static data (serial numbers, firmware, limits). Each scrape reads the modules' values "
        "and alarms within Prometheus' scrape timeout; a snapshot younger than --cache.ttl is "
        "served as is."
    ) in text


def test_config_check_does_what_its_help_says(tmp_path):
    """The help promises no connection to a gateway, and a refused one passes; a host that
    does not resolve and a missing device do not."""
    text = _help()
    assert "that the ports open" not in text
    assert (
        "that each serial device exists and is free and that each gateway's host resolves" in text
    ) and "Gateways are not connected to" in text
    refused = run_cli("--config.check", "--serial.port", "socket://127.0.0.1:9")
    assert refused.returncode == 0, refused.stderr
    for port, message in (
        ("socket://nohost.invalid:9", "does not resolve"),
        (str(tmp_path / "ttyUSB9"), "does not exist"),
    ):
        result = run_cli("--config.check", "--serial.port", port)
        assert result.returncode == 2 and message in result.stderr, result.stderr
