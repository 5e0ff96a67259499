"""Typed stage configuration: one dataclass per stage, loadable from YAML, overridable from the CLI.

Precedence (lowest first): dataclass defaults < YAML file (``--config FILE``) < command-line flags.
The same object drives a local run, spark-submit, a Databricks task and an Airflow task.

Every field becomes a flag ``--field-name``; ``bool`` fields get ``--flag/--no-flag``; a field's
``metadata`` may carry ``help`` and ``choices``. Nothing here imports Spark or torch, so both
``pipelines`` and ``srgnn`` use it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from srgnn.core.errors import ConfigError

C = TypeVar("C", bound="StageConfig")


def load_yaml_mapping(path: str | Path, expected: str) -> dict[str, Any]:
    """A YAML file holding a mapping (``expected`` names its shape in the error), or ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of {expected}")
    return data


def _base_type(tp: Any) -> Any:
    """Strip Optional[...] / X | None to X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Coerce a YAML/CLI value to the field's type, with a clear error naming the field."""
    if value is None:
        return None
    tp = _base_type(tp)
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
        if origin in (list, tuple):
            (inner,) = typing.get_args(tp)[:1] or (str,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""]
            return [_coerce(name, inner, v) for v in value]
        if origin is dict or tp is dict:
            if isinstance(value, str):
                value = json.loads(value)
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config field '{name}': cannot read {value!r} as {tp}") from exc
    return value


@dataclasses.dataclass
class StageConfig:
    """Base class for stage configs. Subclasses are plain dataclasses."""

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        types_ = cls.field_types()
        unknown = sorted(set(data) - set(types_))
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {unknown} for {cls.__name__}; "
                              f"known: {sorted(types_)}")
        obj = cls()
        return obj.replace(**{k: v for k, v in data.items()})

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        data = load_yaml_mapping(path, "option: value")
        # A shared YAML may hold several stages under their section names.
        section = getattr(cls, "yaml_section", None)
        if section and section in data and isinstance(data[section], dict):
            data = data[section]
        return cls.from_dict(data, source=str(path))

    def replace(self: C, **changes: Any) -> C:
        types_ = self.field_types()
        coerced = {k: _coerce(k, types_[k], v) for k, v in changes.items()}
        new = dataclasses.replace(self, **coerced)
        new.validate()
        return new

    def validate(self) -> None:
        """Check field choices; subclasses add their own checks and call super()."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"option --{f.name.replace('_', '-')}: {value!r} is not one of {list(choices)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- command line -------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", help="YAML file with options (command-line flags win)")
        for f in dataclasses.fields(cls):
            tp = _base_type(cls.field_types()[f.name])
            flag = "--" + f.name.replace("_", "-")
            kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                      "help": f.metadata.get("help", "")}
            if tp is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                if f.metadata.get("choices"):
                    kwargs["choices"] = list(f.metadata["choices"])
                kwargs["metavar"] = f.metadata.get("metavar", f.name.upper())
            parser.add_argument(flag, **kwargs)

    @classmethod
    def from_args(cls: type[C], argv: Sequence[str] | None = None, *, prog: str | None = None,
                  description: str | None = None) -> C:
        parser = argparse.ArgumentParser(prog=prog, description=description or cls.__doc__)
        cls.add_arguments(parser)
        ns = vars(parser.parse_args(argv))
        config_path = ns.pop("config", None)
        base = cls.from_yaml(config_path) if config_path else cls()
        cfg = base.replace(**ns)
        cfg.validate_required()
        return cfg

    def validate_required(self) -> None:
        missing = [f.name for f in dataclasses.fields(self)
                   if f.metadata.get("required") and getattr(self, f.name) in (None, "")]
        if missing:
            flags = ", ".join("--" + m.replace("_", "-") for m in missing)
            raise ConfigError(f"missing required option(s): {flags}")


def opt(default: Any = None, help: str = "", choices: Sequence[Any] | None = None,
        required: bool = False, **kw: Any) -> Any:
    """dataclasses.field with help/choices/required metadata."""
    meta = {"help": help, "required": required}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)
