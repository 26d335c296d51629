"""What pyproject.toml cannot say: the deploy files and docs go into the package from
where they are in the repository (one copy, no build step that copies them).

Each directory of ``SHIPPED`` (pylontech_exporter/assets.py, read with ``ast`` since
nothing is installed yet) becomes a data-only package, ``grafana`` ->
``pylontech_exporter.share.grafana``, mapped to its directory with ``package_dir``; its
patterns are its ``package_data``. setuptools then puts the files in the sdist at their
repository paths and in the wheel under ``pylontech_exporter/share/``, where
``pylontech-exporter assets`` finds them.
"""

import ast
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def shipped() -> dict[str, tuple[str, ...]]:
    tree = ast.parse((HERE / "pylontech_exporter" / "assets.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "SHIPPED":
            return ast.literal_eval(node.value)
    raise LookupError("SHIPPED is not in pylontech_exporter/assets.py")


SHIPPED = shipped()
DATA_PACKAGES = {"pylontech_exporter.share." + d.replace("/", "."): d for d in SHIPPED}

setup(
    packages=[*find_packages(include=["pylontech_exporter*"]), *DATA_PACKAGES],
    package_dir=DATA_PACKAGES,
    package_data={
        "pylontech_exporter": ["py.typed"],
        **{name: list(SHIPPED[d]) for name, d in DATA_PACKAGES.items()},
    },
)
