"""Every YAML file the exporter reads is read strictly: a duplicate key, an alias, deep
nesting, a huge file or bytes that are not UTF-8 give one line that says where."""

from __future__ import annotations

import pytest

from pylontech_exporter.errors import ConfigError
from pylontech_exporter.yamlfile import MAX_BYTES, read_yaml


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"basic_auth_users:\n  alice: x\nbasic_auth_users: {}\n",
            "line 3: key 'basic_auth_users' given twice (first at line 1)",
        ),
        (b"banks:\n  - port: a\n    port: b\n", "line 3: key 'port' given twice"),
        (
            b"a: &x [1, 2]\nb: [*x, *x, *x, *x, *x, *x, *x, *x, *x]\n",
            "line 2: anchors and aliases are not supported",
        ),
        (b"a: " + b"[" * 30 + b"]" * 30 + b"\n", "nested deeper than 20 levels"),
        (b"banks:\n  - port: /dev/tty\xffUSB0\n", "not UTF-8 text at line 2"),
        (b"banks: [\n", "not valid YAML"),
    ],
)
def test_refused_with_one_line_that_says_where(tmp_path, data, message):
    path = tmp_path / "file.yml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as error:
        read_yaml(str(path), "config file")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_huge_file_is_not_read_whole(tmp_path):
    path = tmp_path / "big.yml"
    path.write_bytes(b"# " + b"x" * (MAX_BYTES + 10))
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        read_yaml(str(path), "config file")


def test_an_ordinary_file_reads(tmp_path):
    path = tmp_path / "ok.yml"
    path.write_text("banks:\n  - port: /dev/ttyUSB0\n    group: 1\n  - {port: x}\n")
    assert read_yaml(str(path), "config file") == {
        "banks": [{"port": "/dev/ttyUSB0", "group": 1}, {"port": "x"}]
    }
