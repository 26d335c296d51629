"""Reading the YAML files the exporter is given (banks, web config), strictly.

Refused, each with one line that says where: a key given twice in one mapping (a second
``basic_auth_users: {}`` would silently turn basic auth off), anchors and aliases (a few
lines of them expand to gigabytes), nesting deeper than any of our files needs, files
larger than any of our files can be, and bytes that are not UTF-8.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError

#: Larger files are not a configuration.
MAX_BYTES = 1 << 20
#: Deeper nesting is not a configuration either (and recursion must stay bounded).
MAX_DEPTH = 20


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                None, None, "anchors and aliases are not supported", event.start_mark
            )
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise yaml.MarkedYAMLError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    None,
                    None,
                    f"key {str(key)[:40]!r} given twice (first at line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str, what: str) -> Any:
    """The YAML document in ``path``; ConfigError (one line, with the line number where it
    applies) when it cannot be read, is not UTF-8 YAML, or is refused (see above)."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read {what}: {error.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: {what} larger than {MAX_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text at line {line}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
