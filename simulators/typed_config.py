"""Typed, validated configuration models and YAML loading with errors that say what to fix.

Every config in the project is a :class:`StrictModel`: unknown keys, wrong types and values out
of range fail at load time. :func:`load_model` turns pydantic's errors into one message per
problem naming the field's dotted path, the bad value and the allowed range, e.g.::

    configs/x.yaml: world.n_users = -5: must be > 0 (Input should be greater than 0)

Field docstrings (the string literal under each field) become the field descriptions, so
``Model.model_fields[name].description`` documents every knob.
"""
from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or value is wrong; the message names the field, the value and the fix."""


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an error's message for a one-line report (the error's type when it
    has none), cut at a word boundary with " ..." past ``limit`` characters."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line parse error as one line: what is wrong and where (line and column,
    1-based), e.g. "expected ',' or ']', but got '<stream end>' (line 1, column 7)"."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if not problem:
        return " ".join(str(err).split()) or type(err).__name__
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


class StrictModel(BaseModel):
    """Base for all configs: no unknown keys, immutable, field docstrings kept.

    Frozen: assigning to a field (or a nested config's field) would skip the cross-field checks
    of the enclosing config. Change a config with :func:`replace` (validated) instead."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, frozen=True
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """``true`` for a number field is a mistake, not 1 (pydantic would take it as 1)."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, bool) and _takes_number_not_bool(field.annotation):
                    raise ValueError(f"{name} = {str(value).lower()}: a number is expected here, "
                                     "not a boolean")
        return data


def _takes_number_not_bool(annotation: Any) -> bool:
    """Whether a field's type accepts int or float but not bool (``int | None`` included)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
    else:
        options = (annotation,)
    return bool not in options and any(o in (int, float) for o in options)


def _allowed(model: type[BaseModel], loc: tuple) -> str:
    """The constraints of the field at ``loc`` as text (``> 0, <= 1``), or '' if unknown."""
    cls: Any = model
    field = None
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return ""
        field = cls.model_fields.get(str(part))
        if field is None:
            return ""
        cls = field.annotation
    if field is None:
        return ""
    bits = []
    for m in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None:
                bits.append(f"{sym} {v}")
    return ", ".join(bits)


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str = "") -> str:
    """One line per problem: ``source: path = value: message [allowed: ...]``."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"])
        path = ".".join(str(p) for p in loc) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = loc[:-1]
            known = _field_names(model, parent)
            hint = f"; known keys here: {', '.join(known)}" if known else ""
            lines.append(f"{source}{path}: unknown key (remove it or fix its spelling{hint})")
            continue
        value = e.get("input")
        if isinstance(value, dict):  # a cross-field check of a whole section: the message says it
            where = f"{path}: " if loc else ""
            lines.append(f"{source}{where}{msg.removeprefix('Value error, ')}")
            continue
        allowed = _allowed(model, loc)
        extra = f" [allowed: {allowed}]" if allowed else ""
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        lines.append(f"{source}{path} = {shown}: {msg}{extra}")
    return "\n".join(lines)


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    cls: Any = model
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return []
        f = cls.model_fields.get(str(part))
        if f is None:
            return []
        cls = f.annotation
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return sorted(cls.model_fields)
    return []


def validate(model: type[M], data: Any, source: str = "") -> M:
    """Validate ``data`` as ``model``; raise :class:`ConfigError` with readable lines."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(
            "invalid config:\n" + format_validation_error(err, model, source)
        ) from None


def replace(cfg: M, **changes: Any) -> M:
    """A copy of ``cfg`` with fields changed, validated as a whole like a new config (so the
    cross-field checks run; :class:`ConfigError` names what is wrong).

    A mapping given for a field whose current value is a mapping or a config is merged into it
    (``replace(world_cfg, candidates={"n_candidates": 50})`` keeps the other candidate
    settings); any other value, a config object included, replaces the field."""
    return validate(type(cfg), merge(cfg.model_dump(), changes))


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in: nested mappings key by key, a config object as its
    mapping, anything else replaced."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, BaseModel):
            value = value.model_dump()
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            value = merge(out[key], value)
        out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or bad YAML raises :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (give the path to a YAML file, e.g. configs/quickstart.yaml)")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not a UTF-8 text file ({err.reason} at byte {err.start}): save "
                          "it as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {yaml_problem(err)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the last one
    and silently drop the first, e.g. a second ``run:`` block replacing the whole first).

    Only keys written out count: a merge (``<<: *anchor``) may still supply a key that the
    mapping then sets again, which is what merges are for. Checked before the merge is
    flattened in."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node,
                                                                          yaml.ScalarNode):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key_node.value!r} appears twice in one mapping: "
                    "keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_model(model: type[M], path: str | Path) -> M:
    """Load and validate a YAML file as ``model``."""
    return validate(model, read_yaml(path), source=f"{path}: ")
