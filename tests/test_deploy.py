"""The deploy files: the compose demo exposes nothing writable, the Dockerfile pins its base
image and every Python package, the udev rule covers the common adapter chips.

Each check is a function returning a list of problems; each has a test on the shipped file
(no problems) and one on a planted mistake (the problem is found). Where the real tool is
on the machine (Compose v2, udevadm >= 254 with ``verify``), it checks the file too.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import shutil
import subprocess
import tomllib
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from support import REPO

from pylontech_exporter import assets

DOCKER = REPO / "deploy" / "docker"
COMPOSE = DOCKER / "compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
RUNTIME_LOCK = DOCKER / "requirements.lock"
BUILD_LOCK = DOCKER / "build-requirements.lock"
UDEV_RULES = REPO / "deploy" / "udev" / "99-pylontech.rules"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


# --- compose demo ---------------------------------------------------------------------

#: Prometheus flags that open an API that changes it (quit, reload, delete series, write).
WRITABLE_PROMETHEUS = (
    "--web.enable-lifecycle",
    "--web.enable-admin-api",
    "--web.enable-remote-write-receiver",
    "--web.enable-otlp-receiver",
)
REQUIRED_VARIABLE = re.compile(r"\$\{[A-Z_][A-Z0-9_]*:\?[^}]+\}")


def published_on_all_interfaces(port: Any) -> bool:
    """A ``ports:`` entry, short ("3000:3000") or long ({target, published, host_ip}),
    that listens beyond loopback."""
    if isinstance(port, dict):
        return "published" in port and port.get("host_ip") not in ("127.0.0.1", "::1")
    return not re.fullmatch(r"(127\.0\.0\.1|\[::1\]):\d+(-\d+)?:\d+(-\d+)?(/(tcp|udp))?", str(port))


def check_compose(document: dict[str, Any]) -> list[str]:
    problems = []
    if "name" in document:
        problems.append("top-level name: Debian 12's docker-compose 1.29 refuses the file")
    for name, service in document["services"].items():
        problems += [
            f"{name}: port {port!r} is published on all interfaces, not 127.0.0.1"
            for port in service.get("ports", [])
            if published_on_all_interfaces(port)
        ]
        if service.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host publishes every port it listens on")
        command = service.get("command") or []
        words = command.split() if isinstance(command, str) else command
        problems += [
            f"{name}: {flag} lets anyone who reaches the port change Prometheus"
            for flag in WRITABLE_PROMETHEUS
            if any(str(w).startswith(flag) for w in words)
        ]
    environment = document["services"]["grafana"].get("environment", {})
    password = str(environment.get("GF_SECURITY_ADMIN_PASSWORD", ""))
    if not REQUIRED_VARIABLE.fullmatch(password):
        problems.append(
            "grafana: GF_SECURITY_ADMIN_PASSWORD must come from a required variable "
            f"(${{NAME:?message}}), not {password or 'the default admin'!r}"
        )
    if environment.get("GF_AUTH_ANONYMOUS_ENABLED") == "true":
        role = environment.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer")
        if role != "Viewer":
            problems.append(f"grafana: anonymous visitors get role {role}, more than Viewer")
    return problems


def test_the_compose_demo_exposes_nothing_writable():
    assert check_compose(compose()) == []


def plant(change) -> dict[str, Any]:
    document = copy.deepcopy(compose())
    change(document)
    return document


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (lambda d: d["services"]["prometheus"].update(ports=["9090:9090"]), "9090:9090"),
        (lambda d: d["services"]["grafana"].update(ports=["0.0.0.0:3000:3000"]), "3000"),
        (lambda d: d["services"]["exporter"].update(ports=["10460"]), "10460"),
        (
            lambda d: d["services"]["grafana"].update(ports=[{"target": 3000, "published": 3000}]),
            "published on all interfaces",
        ),
        (
            lambda d: d["services"]["prometheus"]["command"].append("--web.enable-lifecycle"),
            "--web.enable-lifecycle",
        ),
        (
            lambda d: d["services"]["grafana"]["environment"].pop("GF_SECURITY_ADMIN_PASSWORD"),
            "default admin",
        ),
        (
            lambda d: d["services"]["grafana"]["environment"].update(
                GF_SECURITY_ADMIN_PASSWORD="admin"
            ),
            "'admin'",
        ),
        (
            lambda d: d["services"]["grafana"]["environment"].update(
                GF_SECURITY_ADMIN_PASSWORD="${GF_ADMIN_PASSWORD:-admin}"
            ),
            "required variable",
        ),
        (
            lambda d: d["services"]["grafana"]["environment"].update(
                GF_AUTH_ANONYMOUS_ORG_ROLE="Admin"
            ),
            "role Admin",
        ),
        (lambda d: d.update(name="pylontech-demo"), "1.29"),
    ],
)
def test_the_compose_check_finds_a_planted_mistake(change, found):
    problems = check_compose(plant(change))
    assert len(problems) == 1 and found in problems[0], problems


def compose_v2() -> list[str] | None:
    """The Compose v2 command on this machine: ``docker compose`` or a v2 ``docker-compose``."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        version = subprocess.run([*command, "version"], capture_output=True, text=True)
        if version.returncode == 0 and re.search(r"\bv?2\.\d+", version.stdout):
            return command
    return None


def test_compose_v2_accepts_the_demo_and_insists_on_the_grafana_password():
    command = compose_v2()
    if command is None:
        pytest.skip("no Compose v2 here (docker compose / docker-compose 2.x)")
    config = [*command, "-f", str(COMPOSE), "config", "--quiet"]
    environment = {k: v for k, v in os.environ.items() if k != "GF_ADMIN_PASSWORD"}
    refused = subprocess.run(config, capture_output=True, text=True, env=environment)
    assert refused.returncode != 0 and "GF_ADMIN_PASSWORD" in refused.stderr
    accepted = subprocess.run(
        config, capture_output=True, text=True, env={**environment, "GF_ADMIN_PASSWORD": "x"}
    )
    assert accepted.returncode == 0, accepted.stderr


# --- Dockerfile and its locks ---------------------------------------------------------

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}")


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, hashes)`` of a pip-compile lock with --generate-hashes; raises
    ValueError for a requirement that is not ``name==version`` with sha256 hashes."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for logical in re.sub(r"\\\n", " ", text).splitlines():
        line = logical.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = re.split(r"\s+(?=--)", line)
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", requirement)
        hashes = [o.removeprefix("--hash=sha256:") for o in options]
        if not match or not hashes or not all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes):
            raise ValueError(f"not pinned with sha256 hashes: {line[:80]}")
        entries[canonicalize_name(match[1])] = (match[2], hashes)
    return entries


def check_lock(text: str, requirements: list[str]) -> list[str]:
    """Problems of a lock against the requirements it must cover."""
    try:
        locked = parse_lock(text)
    except ValueError as error:
        return [str(error)]
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name not in locked:
            problems.append(f"{requirement.name} is not in the lock")
        elif not requirement.specifier.contains(locked[name][0], prereleases=True):
            problems.append(f"{requirement.name}=={locked[name][0]} is not {requirement.specifier}")
    return problems


def test_the_runtime_lock_pins_every_dependency_with_hashes():
    lock = RUNTIME_LOCK.read_text(encoding="utf-8")
    assert check_lock(lock, PYPROJECT["project"]["dependencies"]) == []


def test_the_build_lock_pins_the_build_backend_with_hashes():
    lock = BUILD_LOCK.read_text(encoding="utf-8")
    assert check_lock(lock, PYPROJECT["build-system"]["requires"]) == []


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        (lambda t: re.sub(r"(?m)^bcrypt==.*\n(    --hash.*\n)+", "", t), "bcrypt is not"),
        (lambda t: re.sub(r"(?m)^pyserial==3\.5", "pyserial==3.4", t), "pyserial==3.4"),
        (lambda t: t + "extra-package==1.0\n", "not pinned with sha256 hashes: extra"),
        (lambda t: t.replace("pyyaml==6", "pyyaml>=6", 1), "not pinned"),
        (
            lambda t: re.sub(r"--hash=sha256:[0-9a-f]{64}", "--hash=sha256:abc", t, count=1),
            "not pinned",
        ),
    ],
)
def test_the_lock_check_finds_a_planted_mistake(edit, found):
    lock = edit(RUNTIME_LOCK.read_text(encoding="utf-8"))
    problems = check_lock(lock, PYPROJECT["project"]["dependencies"])
    assert len(problems) == 1 and found in problems[0], problems


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(x for x in text.splitlines() if not x.startswith("#")))
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.strip().partition(" ") for line in joined.splitlines())
        if word
    ]


def check_dockerfile(text: str) -> list[str]:
    problems = []
    instructions = dockerfile_instructions(text)
    arguments = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    for kind, argument in instructions:
        if kind == "FROM":
            image = argument.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: arguments.get(m[1], m[0]), image)
            if not DIGEST.search(image):
                problems.append(f"FROM {image}: not pinned by digest")
            elif not re.match(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*@", image):
                problems.append(f"FROM {image}: the tag does not name an exact version")
        if kind == "RUN":
            for command in re.split(r"&&|;", argument):
                words = command.split()
                if words[:2] == ["pip", "install"]:
                    pinned = "--require-hashes" in words and "--no-deps" in words
                    own_wheel = "--no-deps" in words and all(
                        w.startswith("-") or w.startswith("/wheels/") for w in words[2:]
                    )
                    if not (pinned or own_wheel):
                        problems.append(f"RUN {command.strip()}: installs without hashes")
                if words[:2] == ["pip", "wheel"] and "--no-build-isolation" not in words:
                    problems.append(
                        f"RUN {command.strip()}: build isolation fetches unpinned setuptools"
                    )
    return problems


def test_the_dockerfile_pins_its_base_image_and_every_package():
    assert check_dockerfile(DOCKERFILE.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        (lambda t: DIGEST.sub("", t), "not pinned by digest"),
        (lambda t: t.replace("python:3.13.9-slim", "python:3.13-slim"), "exact version"),
        (lambda t: t.replace("--require-hashes ", "", 1), "installs without hashes"),
        (lambda t: t.replace(" --no-build-isolation", ""), "unpinned setuptools"),
        (
            lambda t: t.replace("pip install --no-deps /wheels/", "pip install /wheels/"),
            "installs without hashes",
        ),
        (lambda t: t + "RUN pip install requests\n", "installs without hashes"),
        (
            lambda t: t.replace("FROM ${PYTHON_IMAGE} AS build", "FROM python:3.13 AS build"),
            "digest",
        ),
    ],
)
def test_the_dockerfile_check_finds_a_planted_mistake(edit, found):
    problems = check_dockerfile(edit(DOCKERFILE.read_text(encoding="utf-8")))
    assert problems and all(found in p for p in problems), problems


def test_the_image_python_is_a_supported_version():
    (tag,) = set(re.findall(r"python:(\d+\.\d+)\.\d+-slim", DOCKERFILE.read_text(encoding="utf-8")))
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(tag + ".0")
    assert f"Programming Language :: Python :: {tag}" in PYPROJECT["project"]["classifiers"]
    assert f"with Python {tag}" in RUNTIME_LOCK.read_text(encoding="utf-8")


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore excludes ``path`` (a parent directory counts; ``!`` undoes)."""
    parents = [path.rsplit("/", n)[0] for n in range(path.count("/") + 1)]
    result = False
    for pattern in patterns:
        negated, glob = pattern.startswith("!"), pattern.lstrip("!").replace("**/", "*")
        if any(fnmatch.fnmatchcase(p, glob) for p in parents):
            result = not negated
    return result


def test_the_build_context_has_what_the_image_build_needs():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "pyproject.toml",
        "setup.py",
        "README.md",
        "LICENSE",
        "pylontech_exporter/cli.py",
        "deploy/docker/requirements.lock",
        "deploy/docker/build-requirements.lock",
        *assets.shipped(REPO),
    ]
    assert [p for p in needed if ignored(p, patterns)] == []
    assert ignored("tests/test_deploy.py", patterns) and ignored(".git/HEAD", patterns)
    assert ignored("pylontech_exporter/__pycache__/cli.cpython-313.pyc", patterns)


# --- udev -----------------------------------------------------------------------------

#: Chips the rule must cover: vendor -> product ids.
ADAPTERS = {
    "0403": {"6001", "6014", "6015"},  # FTDI FT232R, FT232H, FT-X
    "1a86": {"7523"},  # WCH CH340
    "10c4": {"ea60"},  # Silicon Labs CP210x
    "067b": {"2303", "23a3", "23b3", "23c3", "23d3", "23e3", "23f3"},  # Prolific PL2303(HXN)
}
MATCH_KEYS = {
    "ACTION",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "KERNEL",
    "KERNELS",
    "ATTRS",
    "ATTR",
    "ENV",
    "DRIVERS",
}
ASSIGN_KEYS = {"ENV", "SYMLINK", "GROUP", "MODE", "GOTO", "LABEL", "TAG"}
TOKEN = re.compile(r'\s*([A-Z]+)(?:\{([^}]+)\})?\s*(==|!=|\+=|:=|=)\s*"([^"]*)"\s*(,|$)')


def parse_rules(text: str) -> tuple[list[list[tuple[str, str, str, str]]], list[str]]:
    """The rules (lists of (key, attribute, operator, value)) and the problems: what is
    not ``KEY{attr}op"value"``, an operator a key does not take, a GOTO without LABEL."""
    rules, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens, position = [], 0
        while position < len(line):
            token = TOKEN.match(line, position)
            if token is None:
                problems.append(f"line {number}: cannot parse {line[position:][:40]!r}")
                break
            key, attribute, op, value, _ = token.groups()
            matching = op in ("==", "!=")
            if (matching and key not in MATCH_KEYS) or (not matching and key not in ASSIGN_KEYS):
                problems.append(f"line {number}: {key} does not take {op}")
            if key == "ENV" and op == ":=":
                problems.append(f"line {number}: ENV does not take :=")
            tokens.append((key, attribute or "", op, value))
            position = token.end()
        rules.append(tokens)
    labels = {v for rule in rules for k, _, _, v in rule if k == "LABEL"}
    problems += [
        f"GOTO {v} has no LABEL"
        for r in rules
        for k, _, _, v in r
        if k == "GOTO" and v not in labels
    ]
    return rules, problems


def check_udev(text: str) -> list[str]:
    rules, problems = parse_rules(text)
    covered: dict[str, set[str]] = {}
    for rule in rules:
        fields = {(k, a): v for k, a, op, v in rule}
        vendor, products = fields.get(("ATTRS", "idVendor")), fields.get(("ATTRS", "idProduct"))
        if vendor:
            covered.setdefault(vendor, set()).update((products or "").split("|"))
            if fields.get(("ENV", "PYLONTECH_ADAPTER")) != "1":
                problems.append(f"{vendor}:{products} does not mark the adapter")
            if "pylontech-usb-%b" not in fields.get(("SYMLINK", ""), ""):
                problems.append(f"{vendor}:{products} gets no per-port name")
        if fields.get(("ENV", "VE_SERVICE")) == "ignore":
            problems.append("VE_SERVICE=ignore for every adapter would take Victron's cables")
    for vendor, products in ADAPTERS.items():
        missing = products - covered.get(vendor, set())
        if missing:
            problems.append(f"{vendor}:{','.join(sorted(missing))} not covered")
    common = [
        {(k, a): v for k, a, op, v in rule}
        for rule in rules
        if ("SYMLINK", "", "+=", "pylontech") in rule
    ]
    wanted = {("GROUP", ""): "dialout", ("MODE", ""): "0660", ("ENV", "ID_MM_DEVICE_IGNORE"): "1"}
    if not any(all(c.get(k) == v for k, v in wanted.items()) for c in common):
        problems.append("no rule gives /dev/pylontech with dialout 0660 and ModemManager off")
    return problems


def test_the_udev_rule_covers_the_common_adapter_chips():
    assert check_udev(UDEV_RULES.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        (lambda t: t.replace("7523|55d3", "55d3"), "1a86:7523 not covered"),
        (lambda t: t.replace("|23f3", ""), "067b:23f3 not covered"),
        (lambda t: t.replace(', ENV{ID_MM_DEVICE_IGNORE}="1"', ""), "ModemManager"),
        (lambda t: t.replace('MODE="0660"', 'MODE="0666"'), "dialout 0660"),
        (lambda t: t.replace('SYMLINK+="pylontech"\n', 'SYMLNK+="pylontech"\n'), "SYMLNK"),
        (lambda t: t.replace('GOTO="pylontech_end"', 'GOTO="pylontech_ned"', 1), "no LABEL"),
        (
            lambda t: t.replace('ATTRS{idVendor}=="10c4"', 'ATTRS{idVendor}="10c4"'),
            "ATTRS does not take =",
        ),
        (
            lambda t: t.replace(
                'ENV{ID_MM_DEVICE_IGNORE}="1"',
                'ENV{ID_MM_DEVICE_IGNORE}="1", ENV{VE_SERVICE}="ignore"',
            ),
            "Victron",
        ),
    ],
)
def test_the_udev_check_finds_a_planted_mistake(edit, found):
    problems = check_udev(edit(UDEV_RULES.read_text(encoding="utf-8")))
    assert any(found in p for p in problems), problems


def udevadm_with_verify() -> str | None:
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        return None
    help_text = subprocess.run([udevadm, "--help"], capture_output=True, text=True).stdout
    return udevadm if re.search(r"^\s+verify\b", help_text, re.M) else None


def test_udevadm_verify_accepts_the_rule_and_refuses_a_planted_mistake(tmp_path):
    udevadm = udevadm_with_verify()
    if udevadm is None:
        pytest.skip("no udevadm with verify (systemd >= 254) here")
    verify = [udevadm, "verify", "--resolve-names=never"]
    shipped = subprocess.run([*verify, UDEV_RULES], capture_output=True, text=True)
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    broken = tmp_path / "99-broken.rules"
    broken.write_text(UDEV_RULES.read_text(encoding="utf-8").replace("SYMLINK+=", "SYMLNK+=", 1))
    refused = subprocess.run([*verify, broken], capture_output=True, text=True)
    assert refused.returncode != 0 and "SYMLNK" in refused.stdout + refused.stderr


def test_the_unit_opens_the_serial_devices_the_docs_name_and_the_pi_uart():
    """DevicePolicy=closed denies every device not allowed by name: a missing driver name
    is a serial port the service cannot open (the Pi's GPIO UART HATs are /dev/ttyAMA0)."""
    unit = (REPO / "deploy" / "systemd" / "pylontech-exporter.service").read_text()
    assert re.search(r"^DevicePolicy=closed$", unit, re.M)
    allowed = set(re.findall(r"^DeviceAllow=char-(\S+) rw$", unit, re.M))
    assert {"ttyUSB", "ttyACM", "ttyS", "ttyAMA"} <= allowed
    security = (REPO / "docs" / "deploy.md").read_text().split("### Security notes")[1]
    assert set(re.findall(r"`(?:DeviceAllow=)?char-(tty\w+) rw`", security)) == allowed
