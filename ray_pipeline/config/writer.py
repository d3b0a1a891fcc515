"""A pipeline.yaml a person reads, written through a YAML library that keeps comments (ruamel.yaml's
round-trip types), not by joining strings: sections and keys in the order given, small values in
flow style, a comment at the end of a key's line or on lines of their own before it.

The config is read back with PyYAML (YAML 1.1), which takes `Yes`, `off` or `1e3` for a boolean or a
number where ruamel.yaml (YAML 1.2) writes them bare: every string either reads differently is
single-quoted, keys included."""

from __future__ import annotations

import io
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import SingleQuotedScalarString


def _text(value: str) -> str:
    """`value`, quoted when a YAML 1.1 reader would not read it back as this string."""
    try:
        plain = yaml.safe_load(value)
    except yaml.YAMLError:
        plain = None
    return value if plain == value and "\n" not in value else SingleQuotedScalarString(value)


def _node(value: Any, flow: bool) -> Any:
    """`value` as ruamel.yaml nodes: strings quoted where needed, mappings and lists in flow style
    when `flow`."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        out = value if isinstance(value, CommentedMap) else CommentedMap()
        for k, v in list(value.items()):
            out[_text(k) if isinstance(k, str) else k] = _node(v, flow)
        if flow:
            out.fa.set_flow_style()
        return out
    if isinstance(value, (list, tuple)):
        seq = CommentedSeq(_node(v, flow) for v in value)
        if flow:
            seq.fa.set_flow_style()
        return seq
    return value


class Section:
    """One mapping of the document: keys set in order, each with an optional comment."""

    def __init__(self, indent: int = 0) -> None:
        self.map, self.indent = CommentedMap(), indent
        self._pending: list[str] = []

    def section(self, key: str, note: str | None = None) -> Section:
        """A mapping under `key`, set now, filled by the caller."""
        child = Section(self.indent + 2)
        self.set(key, child, note)
        return child

    def set(self, key: str, value: Any, note: str | None = None, inline: bool = False) -> Section:
        """`key: value` (`inline`: a mapping or list on one line), `# note` at the end of its line;
        comment lines queued with `comment` go right above it."""
        value = value.map if isinstance(value, Section) else _node(value, inline)
        name = _text(key)
        self.map[name] = value
        if self._pending:
            self.map.yaml_set_comment_before_after_key(name, before="\n".join(self._pending), indent=self.indent)
            self._pending.clear()
        if note:
            self.map.yaml_add_eol_comment(note, name)
        return self

    def comment(self, *lines: str) -> Section:
        """Comment lines above the next key set in this section."""
        self._pending += lines
        return self


def dump(root: Section, header: list[str]) -> str:
    """The document `root` as YAML text, `header` as comment lines at its top."""
    root.map.yaml_set_start_comment("\n".join(header))
    writer = YAML()  # round-trip: keeps the comments and the flow style set on each node
    writer.width = 1000  # a long comment or path stays on its line
    writer.indent(mapping=2, sequence=4, offset=2)
    out = io.StringIO()
    writer.dump(root.map, out)
    return out.getvalue()
