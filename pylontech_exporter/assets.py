"""``pylontech-exporter assets DIR``: write out what a deployment needs besides the exporter
(the Grafana dashboard and its provisioning, the Prometheus rules and scrape configs, the
systemd unit, the udev rule, the docs), byte for byte as the repository has them.

DIR gets the repository's layout (``DIR/grafana/pylontech.json``,
``DIR/deploy/prometheus/...``), so the commands of docs/deploy.md work from DIR as from a
checkout (but the rule unit tests and the compose demo, which need the source). A wheel
carries the files under ``pylontech_exporter/share/``: setup.py packages them from where
they are in the repository, reading :data:`SHIPPED` from this file. An editable install
has no copy and reads the repository itself.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

#: What is shipped: directory (relative to the repository root, and to DIR) -> file
#: patterns. setup.py reads this literal (with ``ast``, without importing the package).
SHIPPED: dict[str, tuple[str, ...]] = {
    "grafana": ("*.json",),
    "grafana/provisioning/dashboards": ("*.yml",),
    "grafana/provisioning/datasources": ("*.yml",),
    "deploy/prometheus": ("*.yml",),
    "deploy/systemd": ("*.service", "*.env"),
    "deploy/udev": ("*.rules",),
    "docs": ("*.md", "*.png"),
}
#: Where a wheel has them, below the package.
PACKAGED = "share"
#: The only job selector of the rule files; ``--rules.job-selector`` replaces it.
JOB_SELECTOR = 'job="pylontech"'
RULE_FILES = (
    "deploy/prometheus/pylontech.recording.yml",
    "deploy/prometheus/pylontech.alerts.yml",
)
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\\n]|\\.)*"\s*'
#: One or more PromQL label matchers, comma-separated: job="solar", job=~"a|b",site="x".
_SELECTOR = re.compile(rf"{_MATCHER}(?:,{_MATCHER})*")


def source() -> Path:
    """The directory the shipped files are in: the wheel's ``share/``, or the repository
    of an editable install or checkout."""
    package = Path(__file__).resolve().parent
    if (package / PACKAGED).is_dir():
        return package / PACKAGED
    if (package.parent / "pyproject.toml").is_file():
        return package.parent
    raise FileNotFoundError(
        f"{package / PACKAGED} is missing: this installation carries no deploy files "
        "(reinstall pylontech-exporter from a wheel or an sdist)"
    )


def shipped(root: Path) -> list[str]:
    """The shipped files under ``root``, as sorted POSIX paths relative to it."""
    return sorted(
        {
            path.relative_to(root).as_posix()
            for directory, patterns in SHIPPED.items()
            for pattern in patterns
            for path in (root / directory).glob(pattern)
            if path.is_file()
        }
    )


def job_selector(text: str) -> str:
    """``--rules.job-selector``: label matchers as PromQL writes them inside ``{...}``."""
    if not _SELECTOR.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f'expected PromQL label matchers such as job="solar" or job=~"pylontech|bms", '
            f"got {text!r}"
        )
    return text.strip()


def doc(name: str) -> bytes | None:
    """The text of ``docs/NAME.md`` (``NAME`` or ``NAME.md``) as shipped, for the
    exporter's ``/docs/`` pages; None when there is no such page."""
    name = name.removesuffix(".md")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        return None
    try:
        path = source() / "docs" / f"{name}.md"
        return path.read_bytes() if path.is_file() else None
    except OSError:
        return None


def render(root: Path, relative: str, selector: str | None = None) -> bytes:
    """The content ``assets`` writes for ``relative``: the file, with ``selector`` in place
    of ``job="pylontech"`` in the rule files."""
    data = (root / relative).read_bytes()
    if selector is not None and relative in RULE_FILES:
        data = data.replace(JOB_SELECTOR.encode(), selector.encode())
    return data


def write(
    target: Path, *, root: Path, force: bool = False, selector: str | None = None
) -> list[str]:
    """Write the shipped files of ``root`` below ``target``; returns their relative paths.
    Writes nothing when one of them exists, unless ``force``."""
    files = shipped(root)
    if not files:
        raise FileNotFoundError(f"no deploy files in {root}")
    if selector is not None:
        found = sum((root / f).read_text(encoding="utf-8").count(JOB_SELECTOR) for f in RULE_FILES)
        if not found:
            raise ValueError(f"the rule files have no {JOB_SELECTOR} to replace")
    existing = [f for f in files if (target / f).exists() or (target / f).is_symlink()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{target / existing[0]} exists{more}; --force overwrites")
    for relative in files:
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render(root, relative, selector))
    return files


def main(argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """The ``assets`` command, parsed by ``parser`` (the CLI's, for its error style)."""
    parser.description = (
        "Write the Grafana dashboard and provisioning, the Prometheus rules and scrape "
        "configs, the systemd unit, the udev rule and the docs into DIR, in the "
        "repository's layout (DIR/grafana, DIR/deploy/..., DIR/docs)."
    )
    parser.add_argument("directory", metavar="DIR", help="where to write (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    parser.add_argument(
        "--rules.job-selector",
        dest="job_selector",
        type=job_selector,
        metavar="SELECTOR",
        help=f"label matchers that replace {JOB_SELECTOR} in the rule files, e.g. "
        'job="solar" or job=~"pylontech|batteries" (the scrape job\'s name)',
    )
    args = parser.parse_args(list(argv))
    target = Path(args.directory)
    try:
        files = write(target, root=source(), force=args.force, selector=args.job_selector)
    except (OSError, ValueError) as error:
        if not isinstance(error, OSError) or error.filename is None:
            # ours: DIR's files exist, or this installation has none to write
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 1
        where = "" if str(error.filename) == str(target) else f" ({error.filename})"
        print(
            f"{parser.prog}: error: cannot write to {target}: {error.strerror}{where}; "
            "give a directory you can write to",
            file=sys.stderr,
        )
        return 2
    for relative in files:
        print(target / relative)
    return 0
