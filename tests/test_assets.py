"""``pylontech-exporter assets DIR`` and the package that carries what it writes: the
command against the repository (as an editable install has it), then a wheel and an
sdist built from a copy of the working tree, the wheel installed in a fresh venv, and
the command run from there; plus the metadata PyPI shows."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from support import REPO
from support.rules import assert_promtool_ok, require_binary, run_promtool

from pylontech_exporter import assets
from pylontech_exporter.cli import main

#: What a deployment needs, named here independently of assets.SHIPPED's patterns.
MUST_SHIP = {
    "grafana/pylontech.json",
    "grafana/provisioning/dashboards/pylontech.yml",
    "grafana/provisioning/datasources/prometheus.yml",
    "deploy/prometheus/pylontech.recording.yml",
    "deploy/prometheus/pylontech.alerts.yml",
    "deploy/prometheus/prometheus.yml",
    "deploy/prometheus/prometheus-agent.yml",
    "deploy/systemd/pylontech-exporter.service",
    "deploy/systemd/pylontech-exporter.env",
    "deploy/udev/99-pylontech.rules",
    "docs/deploy.md",
    "docs/metrics.md",
}
GITHUB = "https://github.com/pylontech-exporter/pylontech-exporter"


def files_below(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


def assert_same_as_repository(directory: Path, repository: Path = REPO) -> None:
    written = files_below(directory)
    assert written == set(assets.shipped(repository))
    assert written >= MUST_SHIP
    for relative in written:
        assert (directory / relative).read_bytes() == (repository / relative).read_bytes()


# --- the command ----------------------------------------------------------------------


def test_assets_writes_every_shipped_file_as_the_repository_has_it(tmp_path, capsys):
    assert main(["assets", str(tmp_path / "out")]) == 0
    assert_same_as_repository(tmp_path / "out")
    listed = capsys.readouterr().out.splitlines()
    assert sorted(listed) == sorted(str(tmp_path / "out" / f) for f in assets.shipped(REPO))


def test_every_file_in_a_shipped_directory_is_shipped():
    """A new file next to the shipped ones (a second dashboard, a runbook) is not left out
    by a pattern that is too narrow."""
    shipped = set(assets.shipped(REPO))
    for directory in assets.SHIPPED:
        for path in (REPO / directory).iterdir():
            if path.is_file():
                assert path.relative_to(REPO).as_posix() in shipped


def test_an_existing_file_stops_it_before_anything_is_written(tmp_path, capsys):
    mine = tmp_path / "grafana" / "pylontech.json"
    mine.parent.mkdir()
    mine.write_text("my edited dashboard")
    assert main(["assets", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{mine} exists" in error and "--force" in error
    assert mine.read_text() == "my edited dashboard"
    assert files_below(tmp_path) == {"grafana/pylontech.json"}


def test_force_overwrites(tmp_path):
    mine = tmp_path / "deploy" / "udev" / "99-pylontech.rules"
    mine.parent.mkdir(parents=True)
    mine.write_text("old")
    assert main(["assets", str(tmp_path), "--force"]) == 0
    assert_same_as_repository(tmp_path)


def test_the_job_selector_replaces_job_pylontech_in_the_rule_files_only(tmp_path):
    selector = 'job=~"solar|batteries",site!=""'
    assert main(["assets", str(tmp_path), "--rules.job-selector", selector]) == 0
    replaced = 0
    for relative in assets.shipped(REPO):
        original = (REPO / relative).read_text(encoding="utf-8", errors="replace")
        written = (tmp_path / relative).read_text(encoding="utf-8", errors="replace")
        if relative in assets.RULE_FILES:
            assert 'job="pylontech"' not in written
            assert written == original.replace('job="pylontech"', selector)
            replaced += original.count('job="pylontech"')
        else:
            assert written == original, relative
    assert replaced > 0, 'the rule files have no job="pylontech" to replace'


@pytest.mark.parametrize("selector", ["pylontech", 'job="a', "job=a", '{job="a"}', 'job="a",'])
def test_a_selector_that_is_not_label_matchers_is_refused(tmp_path, capsys, selector):
    with pytest.raises(SystemExit) as stopped:
        main(["assets", str(tmp_path), "--rules.job-selector", selector])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "label matchers" in error
    assert not tmp_path.joinpath("deploy").exists()


@pytest.mark.prometheus
def test_promtool_accepts_the_rules_with_another_job_selector(tmp_path):
    promtool = require_binary("promtool")
    assert main(["assets", str(tmp_path), "--rules.job-selector", 'job=~"solar|pylontech"']) == 0
    assert_promtool_ok(run_promtool(promtool, "check", "rules", *assets.RULE_FILES, cwd=tmp_path))
    assert 'job=~"solar|pylontech"' in (tmp_path / assets.RULE_FILES[1]).read_text()


# --- the package ----------------------------------------------------------------------

#: What a copy of the working tree leaves out: local state, never part of a build.
NOT_SOURCE = (".git", ".venv", "__pycache__", ".*_cache", ".hypothesis", "build", "dist")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """An sdist of a copy of the working tree, and the wheel ``python -m build`` makes from
    that sdist (so a file missing from the sdist is missing from the wheel too)."""
    base = tmp_path_factory.mktemp("package")
    tree = base / "tree"
    ignore = shutil.ignore_patterns(*NOT_SOURCE, "*.egg-info", "node_modules", ".peers")
    shutil.copytree(REPO, tree, ignore=ignore)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(base / "dist"), str(tree)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = (base / "dist").glob("*.tar.gz")
    (wheel,) = (base / "dist").glob("*.whl")
    return {"sdist": sdist, "wheel": wheel, "base": base, "tree": tree}


def test_the_sdist_has_the_license_and_every_shipped_file_where_the_repository_has_it(built):
    with tarfile.open(built["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"LICENSE", "setup.py", "pyproject.toml", "README.md"} <= names
    assert set(assets.shipped(built["tree"])) <= names


def test_the_wheel_declares_the_license_as_spdx_and_carries_the_file(built):
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        text = wheel.read(metadata).decode()
        (license_file,) = (n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert wheel.read(license_file) == (REPO / "LICENSE").read_bytes()
    assert "License-Expression: MIT" in text.splitlines()
    assert "Classifier: License ::" not in text  # SPDX and a license classifier exclude each other
    assert f"Project-URL: Issues, {GITHUB}/issues" in text


def test_pip_install_gives_a_user_the_dashboard_rules_and_deploy_files(built, tmp_path):
    environment = built["base"] / "venv"
    if not environment.exists():
        venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", built["wheel"]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    out = tmp_path / "out"
    ran = subprocess.run(
        [environment / "bin" / "pylontech-exporter", "assets", str(out)],
        cwd=tmp_path,  # away from the repository: only the wheel's copy can be found
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert_same_as_repository(out, built["tree"])  # the tree as it was built (others edit REPO)
    where = subprocess.run(
        [python, "-c", "import pylontech_exporter.assets as a; print(a.source())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().endswith("site-packages/pylontech_exporter/share"), where


# --- what PyPI shows ------------------------------------------------------------------


def test_the_python_versions_agree_everywhere():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    oldest = config["project"]["requires-python"].removeprefix(">=")
    assert config["tool"]["ruff"]["target-version"] == "py" + oldest.replace(".", "")
    assert config["tool"]["mypy"]["python_version"] == oldest
    prefix = "Programming Language :: Python :: 3."
    minors = sorted(
        int(c.removeprefix(prefix))
        for c in config["project"]["classifiers"]
        if c.startswith(prefix)
    )
    assert minors == list(range(int(oldest.split(".")[1]), minors[-1] + 1))


def test_readme_links_work_outside_the_repository():
    """PyPI shows the README without the repository: a relative link is a dead link."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", readme) + re.findall(r"<(\S+?)>", readme)
    relative = [t for t in targets if not re.match(r"(https?://|#|mailto:)", t)]
    assert relative == []
    for target in targets:
        if target.startswith(f"{GITHUB}/blob/main/"):
            assert (REPO / target.removeprefix(f"{GITHUB}/blob/main/").split("#")[0]).exists()


def test_a_directory_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    for target in (Path("/proc/nope"), blocker / "sub"):
        assert main(["assets", str(target)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"cannot write to {target}: " in error, error
        assert "Errno" not in error
