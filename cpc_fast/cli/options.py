"""A command's options, built from config fields: each option is declared once, in its field.

    @app.command()
    @config_options(PretrainConfig, pretrain.PRESETS, flags={"out_dir": "--out"})
    def pretrain(out: ..., overrides: Overrides | None = None, ...) -> None:
        config = overrides.apply(pretrain.preset(preset_name))

Every field of the config (nested configs included) whose :func:`~cpc_fast.settings.setting`
has a ``flag`` becomes an option in place of the ``overrides`` parameter, with the field's
help and the presets' defaults ("default: paper P, tiny T"); the values the user gave arrive
as :class:`Overrides` (dotted field name -> value), so a preset's value is kept for every
option left out. ``FLAGS[command]`` maps field and argument names to the command's flags,
which is how :func:`cpc_fast.cli.app.main` words a library error for the command line.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer

from cpc_fast.errors import UserInputError
from cpc_fast.settings import Config, apply_overrides, config_fields, field_type, flag_of

# command name -> {field or argument name: flag}, filled as commands are declared
FLAGS: dict[str, dict[str, str]] = {}

# The output flags every long-running command shares (pretrain, experiment, demo, visualize):
# --no-progress drops the progress bars and info lines, and -q/--quiet says the same in one
# letter; warnings, errors and the final result still print.
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or info lines (errors still print).")
]
ShowProgress = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress", help="Progress bars and info lines (rank 0); -q turns them off."
    ),
]


def shows_progress(progress: bool, quiet: bool) -> bool:
    """Whether a command prints progress: on unless --no-progress or -q."""
    return progress and not quiet


class Overrides(dict):
    """The config fields given on the command line: dotted name -> value."""

    def apply(self, config: Config) -> Config:
        """``config`` with these fields replaced, validated."""
        return apply_overrides(config, self)


def config_options(
    cls: type[Config],
    presets: Mapping[str, Callable[[], Config]],
    *,
    flags: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Gives the decorated command one option per flagged field of ``cls`` (module docstring).

    ``flags`` names the flags of the command's own arguments (``{"restart": "--restart"}``),
    for the error messages.
    """
    built = {name: make() for name, make in presets.items()}
    options = [(dotted, f) for dotted, f in config_fields(cls) if flag_of(dotted, f)]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()
        ]
        at = [p.name for p in own].index("overrides")
        generated = [_parameter(cls, dotted, f, built) for dotted, f in options]
        names = {_param_name(dotted): dotted for dotted, _ in options}
        # An on-switch left out is False; a --x/--no-x pair left out is None (its --no-x is
        # a given False, to be kept).
        switches = {_param_name(d) for d, f in options if _is_switch(cls, d, f)}

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            given = Overrides()
            for param, dotted in names.items():
                value = kwargs.pop(param)
                if value is not None and not (value is False and param in switches):
                    given[dotted] = _parse(cls, dotted, value)
            return command(**kwargs, overrides=given)

        run.__signature__ = signature.replace(parameters=own[:at] + generated + own[at + 1 :])
        mapping = {dotted.rpartition(".")[2]: flag_of(dotted, f) for dotted, f in options}
        FLAGS[command.__name__.replace("_", "-")] = {**mapping, **(flags or {})}
        return run

    return decorate


def _param_name(dotted: str) -> str:
    return dotted.replace(".", "__")


def _parameter(
    cls: type[Config], dotted: str, f: Any, presets: Mapping[str, Config]
) -> inspect.Parameter:
    flag = flag_of(dotted, f)
    kind = field_type(cls, dotted)
    is_switch = _is_switch(cls, dotted, f)
    option_type = bool if kind is bool else (str if typing.get_origin(kind) is tuple else kind)
    help_text = f"{f.metadata['help']} {_defaults(dotted, f, presets, is_switch)}".rstrip()
    option = typer.Option(
        flag, help=help_text, metavar=f.metadata.get("metavar"), show_default=False
    )
    required = f.metadata.get("required_flag")
    default = ... if required else (False if is_switch else None)
    annotation = option_type if required or is_switch else option_type | None
    return inspect.Parameter(
        _param_name(dotted),
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, option],
    )


def _is_switch(cls: type[Config], dotted: str, f: Any) -> bool:
    """A bool option that can only be turned on (``--strict``), not a ``--x/--no-x`` pair."""
    return field_type(cls, dotted) is bool and "/" not in flag_of(dotted, f)


def _defaults(dotted: str, f: Any, presets: Mapping[str, Config], is_switch: bool) -> str:
    """ "(default: X)", or "(default: paper X, tiny Y)" where the presets differ."""
    if f.metadata.get("required_flag") or is_switch:
        return ""  # a required option or an on-switch has no default to speak of
    values = {
        name: _show(_get(config, dotted), f, type(config).default_texts.get(dotted))
        for name, config in presets.items()
    }
    if len(set(values.values())) == 1:
        return f"(default: {f.metadata.get('default_text') or next(iter(values.values()))})"
    return "(default: " + ", ".join(f"{name} {value}" for name, value in values.items()) + ")"


def _get(config: Config, dotted: str) -> Any:
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def _show(value: Any, f: Any, text: str | None = None) -> str:
    """A default as ``--help`` says it; None as ``text`` (the run's own words, from
    :attr:`~cpc_fast.settings.Config.default_texts`), else the field's ``default_text``."""
    if value is None:
        return text or f.metadata.get("default_text") or "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _parse(cls: type[Config], dotted: str, value: Any) -> Any:
    """A command-line value as the field holds it: comma lists become tuples."""
    kind = field_type(cls, dotted)
    if typing.get_origin(kind) is not tuple:
        return value
    item = typing.get_args(kind)[0]
    try:
        return tuple(item(x.strip()) for x in str(value).split(",") if x.strip())
    except ValueError:
        name = dotted.rpartition(".")[2]
        what = "numbers" if item is int else "names"
        raise UserInputError(f"`{name}` takes a comma list of {what}, got {value!r}") from None


__all__ = ["FLAGS", "Overrides", "Quiet", "ShowProgress", "config_options", "shows_progress"]
