"""A Griffe extension for the API reference: the library's docstrings as mkdocstrings shows them.

Two things the docstrings say in their own way, turned into what the site can render:

- Sphinx roles (``:func:`cpc_info_nce```, ``:class:`~cpc_fast.models.cpc.CPCConfig```): each
  becomes code that links to the object's entry when the reference renders it (an optional
  autoref: a name the reference leaves out stays plain code, never a broken link). Names
  resolve in the docstring's own scope, as Sphinx would.
- reStructuredText's literal-block marker: "text::" before an indented block reads "text:"
  (the block is already code in Markdown).
- Config fields: a ``setting(...)`` field keeps its documentation in ``help=`` (the same line
  ``--help`` prints); the class's docstring gets an "Attributes" table of them, each with its
  flag and whether a resumed run may change it, and the class's signature shows each
  field's default value rather than the ``setting(...)`` call.

mkdocs.yml loads this file by path; it is no module of the package.
"""

from __future__ import annotations

import dataclasses
import html
import re

import griffe

# :role:`target`, :py:role:`target` and :role:`title <target>`
_ROLE = re.compile(
    r":(?:py:)?(?:mod|class|func|meth|attr|data|obj|exc|const):`(?P<body>[^`]+)`",
)


# "text::" at the end of a line, before a literal block
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", flags=re.M)


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path ``target`` names, seen from ``obj``'s scope, or None."""
    head, _, rest = target.partition(".")
    if not head:  # ".name": relative to the parent
        return _resolve(obj.parent, rest) if obj.parent else None
    try:
        full = obj.resolve(head)
    except (griffe.NameResolutionError, AttributeError):
        if "." in target:  # already a full path
            return target
        return None
    return f"{full}.{rest}" if rest else full


def _link(obj: griffe.Object, body: str) -> str:
    match = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", body)
    target = (match["target"] if match else body).strip()
    short = target.startswith("~")
    target = target.lstrip("~")
    title = match["title"] if match else (target.rpartition(".")[2] if short else target)
    full = _resolve(obj, target)
    code = f"<code>{html.escape(title)}</code>"
    if full is None:
        return code
    return f'<autoref identifier="{html.escape(full)}" optional>{code}</autoref>'


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return ""


def _field_line(field: dataclasses.Field) -> str:
    """What a ``setting(...)`` field means: its help, flag and resume rule, one line."""
    notes = [field.metadata["help"]]
    flag = field.metadata.get("flag")
    if flag is True:
        flag = "--" + field.name.replace("_", "-")
    if flag:
        notes.append(f"Command line: `{flag}`.")
    if field.metadata.get("resumable"):
        notes.append("A resumed run may change it.")
    return " ".join(notes)


class CpcFastDocs(griffe.Extension):
    """Sphinx roles to links; config fields documented from their ``help``."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        if pkg.name == "cpc_fast":
            self._visit(pkg)

    def _visit(self, obj: griffe.Object) -> None:
        if obj.is_class:
            self._document_fields(obj)
        if obj.docstring is not None:
            text = _ROLE.sub(lambda m: _link(obj, m["body"]), obj.docstring.value)
            obj.docstring.value = _LITERAL_MARKER.sub(":", text)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member)

    def _document_fields(self, cls: griffe.Class) -> None:
        try:
            runtime = griffe.dynamic_import(cls.path)
        except ImportError:
            return
        if not (isinstance(runtime, type) and dataclasses.is_dataclass(runtime)):
            return
        # One "Attributes" table in the class's docstring, not a heading per field.
        rows = []
        for field in dataclasses.fields(runtime):
            member = cls.members.get(field.name)
            if member is None or member.is_alias or "help" not in field.metadata:
                continue
            member.value = _default(field) or None
            kind = f" ({member.annotation})" if member.annotation else ""
            rows.append(f"    {field.name}{kind}: {_field_line(field)}")
        if not rows:
            return
        table = "Attributes:\n" + "\n".join(rows)
        if cls.docstring is None:
            cls.docstring = griffe.Docstring(table, parent=cls, parser="google")
        else:  # the parser mkdocstrings gave it stays
            cls.docstring.value += "\n\n" + table
