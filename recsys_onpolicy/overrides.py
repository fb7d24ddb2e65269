"""`--set key.path=value` overrides applied to a config mapping before validation.

Values are parsed as YAML scalars/flow collections (`3`, `0.1`, `true`, `[a, b]`, `{x: 1}`), so
`--set regimes=[grpo,ppo]` and `--set run.world.users.n_users=500` both work. Unknown keys are not
checked here: validation of the resulting mapping reports them with the known keys.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import yaml

from simulators.typed_config import ConfigError, yaml_problem


def parse_override(text: str) -> tuple[list[str], object]:
    """`'a.b=3'` -> (['a', 'b'], 3). Raises ConfigError on a malformed override."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set run.days=5")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in path):
        raise ConfigError(f"--set {text!r}: the key must be a dotted path such as run.world.users.n_users")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {yaml_problem(err)}"
                          ) from None
    return path, value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Return a deep copy of ``data`` with every override applied (later ones win)."""
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"--set {text!r}: {where} is a {type(child).__name__}, not a section")
            node = child
        node[path[-1]] = value
    return out
