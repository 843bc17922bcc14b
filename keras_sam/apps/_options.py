"""A command's options, defined once: dataclass fields with metadata.

Each setting of `TrainConfig` or `DemoSettings` is a dataclass field made by
`setting(default, help, ...)`. The field holds everything about it: its
default, its help text, how its text is parsed and which check accepts its
value. `add_arguments` derives the argparse options from the fields (the
flag is the field name with dashes), `given` reads back the values a user
gave, and `checked` runs the same checks on settings made from Python, so
that a default, a help text or a check exists in one place only.

>>> import argparse, dataclasses
>>> from keras_sam.apps import _argtypes as argtypes
>>> @dataclasses.dataclass
... class Settings:
...     epochs: int = setting(10, "epochs to train", parse=argtypes.integer,
...                           check=argtypes.positive_int)
...     fast: bool = setting(False, "go fast", switch="on")
>>> parser = argparse.ArgumentParser()
>>> add_arguments(parser, Settings)
>>> args = parser.parse_args(["--epochs", "3"])
>>> given(args, Settings)
{'epochs': 3}
>>> Settings(**given(args, Settings))
Settings(epochs=3, fast=False)
>>> checked(Settings(epochs=0))
Traceback (most recent call last):
keras_sam._validation.InvalidArgumentError: `epochs` must be an integer >= 1. Received: epochs=0.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from keras_sam.apps import _argtypes as argtypes

__all__ = ["Option", "add_arguments", "checked", "given", "options_of", "setting"]

_KEY = "keras_sam.apps.option"


@dataclasses.dataclass(frozen=True)
class Option:
    """What the command line and the checks need to know about one setting.

    Attributes:
        help: the help text, without the default; `None` for a setting that
            is not a command-line option (it is still checked).
        check: `check(name, value) -> value`, raising `InvalidArgumentError`
            (`keras_sam.apps._argtypes`).
        parse: turns the option's text into a value (`argtypes.integer`, ...).
        choices: the accepted values, if a fixed few.
        switch: `"on"` for a flag that turns the setting on (`--nesterov`),
            `"on/off"` for a pair (`--flip` / `--no-flip`); `None` for an
            option that takes a value.
        flags: the option strings, if not `--field-name`.
        group: the `--help` section.
        shown_default: how `--help` states the default, where the default
            value does not say it (`None` meaning "the method's own", say);
            `""` states none.
        metavar: argparse's `metavar`.
        many: one or more values (`nargs="+"`), a tuple, each checked.
    """

    help: str | None = None
    check: argtypes.Check | None = None
    parse: Callable[[str], Any] = argtypes.text
    choices: tuple = ()
    switch: str | None = None
    flags: tuple[str, ...] = ()
    group: str | None = None
    shown_default: str | None = None
    metavar: str | None = None
    many: bool = False


def setting(default, help: str | None = None, **option) -> Any:
    """A dataclass field with `default` and an `Option(help, **option)`."""
    return dataclasses.field(default=default, metadata={_KEY: Option(help=help, **option)})


def options_of(settings_class) -> list[tuple[dataclasses.Field, Option]]:
    """The fields of `settings_class` made by `setting`, in order."""
    return [
        (field, field.metadata[_KEY])
        for field in dataclasses.fields(settings_class)
        if _KEY in field.metadata
    ]


def _shown_default(field: dataclasses.Field, option: Option) -> str:
    if option.shown_default is not None:
        return option.shown_default
    default = field.default
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None:
        return ""
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return str(default)


def add_arguments(
    parser: argparse.ArgumentParser, settings_class, groups: Iterable[str] = ()
) -> None:
    """Adds an option to `parser` for each command-line setting of `settings_class`.

    The options have no argparse default (`argparse.SUPPRESS`): a value the
    user did not give is absent from the parsed arguments, and the
    dataclass's own default applies (`given`). `groups` orders the `--help`
    sections; a group not listed comes after them.
    """
    sections = {name: parser.add_argument_group(name) for name in groups}
    for field, option in options_of(settings_class):
        if option.help is None:
            continue
        if option.group is None:
            target = parser
        else:
            if option.group not in sections:
                sections[option.group] = parser.add_argument_group(option.group)
            target = sections[option.group]
        shown = _shown_default(field, option)
        help_text = option.help + (f" (default: {shown})" if shown else "")
        flags = option.flags or ("--" + field.name.replace("_", "-"),)
        arguments = dict(
            dest=field.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%")
        )
        if option.switch == "on":
            arguments["action"] = "store_true"
        elif option.switch == "on/off":
            arguments["action"] = argparse.BooleanOptionalAction
        else:
            arguments["type"] = argtypes.argument_type(field.name, option.parse, option.check)
            if option.choices:
                arguments["choices"] = option.choices
            if option.metavar:
                arguments["metavar"] = option.metavar
            if option.many:
                arguments["nargs"] = "+"
        target.add_argument(*flags, **arguments)


def given(args: argparse.Namespace, settings_class) -> dict[str, Any]:
    """The values of `settings_class`'s options that `args` holds: those given."""
    values = {}
    for field, option in options_of(settings_class):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if option.many else value
    return values


def checked(settings) -> dict[str, Any]:
    """Every setting of the dataclass instance `settings`, checked.

    Returns `{name: checked value}` (checks may convert, e.g. an int to a
    float), or raises `InvalidArgumentError` for the first one refused. A
    setting whose default is `None` may be `None`.
    """
    values = {}
    for field, option in options_of(type(settings)):
        name, value = field.name, getattr(settings, field.name)
        if value is None and field.default is None:
            values[name] = None
            continue
        if option.many:
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise argtypes.InvalidArgumentError(
                    f"`{name}` must be a sequence of values. Received: {name}={value!r}."
                )
            value = tuple(value)
            if not value:
                raise argtypes.InvalidArgumentError(
                    f"`{name}` must hold at least one value. Received: {name}={value!r}."
                )
        check = _check_of(option)
        if check is not None:
            value = tuple(check(name, v) for v in value) if option.many else check(name, value)
        values[name] = value
    return values


def _check_of(option: Option):
    checks = []
    if option.switch is not None:
        checks.append(argtypes.boolean)
    if option.choices:
        checks.append(argtypes.one_of(option.choices))
    if option.check is not None:
        checks.append(option.check)
    if not checks:
        return None

    def check(name, value):
        for one in checks:
            value = one(name, value)
        return value

    return check
