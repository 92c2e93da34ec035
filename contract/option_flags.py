"""Command-line flags for the motion options, made from AnimationOptions' fields, so `animate render`
and `animate submit` spell and check them as the HTTP form does."""

import argparse
from typing import Any, Literal, get_args, get_origin

from contract.options import MOTION_OPTIONS, AnimationOptions


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_motion_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per motion option; a flag not given stays None, so the option keeps its default."""
    for name in MOTION_OPTIONS:
        field = AnimationOptions.model_fields[name]
        default = f" (default: {field.default})"
        kind = field.annotation
        if kind is bool:
            parser.add_argument(
                _flag(name),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=field.description + default,
            )
        elif get_origin(kind) is Literal:
            parser.add_argument(
                _flag(name), choices=get_args(kind), default=None, help=field.description + default
            )
        else:
            parser.add_argument(_flag(name), type=kind, default=None, help=field.description + default)


def motion_values(args: argparse.Namespace) -> dict[str, Any]:
    """The motion options given on the command line."""
    return {name: getattr(args, name) for name in MOTION_OPTIONS if getattr(args, name) is not None}
