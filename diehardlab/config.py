"""TOML configuration files validated by pydantic, with errors that name the file and the exact field.

Used for campaign files (``diehardlab.campaign``), model configurations (``setups/models``) and the
beam-simulator specs, so every configuration error reads the same way::

    setups/chipir.toml: dut[2] "carol-k201" -> ssh -> port: Input should be a valid integer (got 'twenty-two')
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from diehardlab.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6 images)
    import tomli as tomllib

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base of every configuration table: unknown keys are errors (a typo must not be ignored), and no number
    may be infinite or NaN (TOML allows ``inf`` and ``nan``; no timeout, rate or factor means them)."""

    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a folder, not a TOML file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "TOML files are UTF-8: save it as UTF-8, or is this the right file?"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _where(data: Any, loc: tuple[Any, ...]) -> str:
    """A readable path into the document, naming list items by their ``name`` when they have one."""
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, int) and parts:
            label = f"{parts[-1]}[{key + 1}]"
            item = node[key] if isinstance(node, list) and key < len(node) else None
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                label += f' "{item["name"]}"'
            parts[-1] = label
            node = item
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return " -> ".join(parts) or "(top level)"


def format_validation_error(exc: ValidationError, data: Any, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"]
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # models and dataclasses
            msg = "unknown key (a typo? see the examples in setups/)"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict | list):
            msg += f" (got {err['input']!r})"
        lines.append(f"{source}: {_where(data, loc)}: {msg}")
    return "\n".join(lines)


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    refuse_passwords(data, source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data, source)) from None


def load(model: type[M], path: str | Path) -> M:
    return validate(model, read_toml(path), str(path))


def refuse_passwords(data: Any, source: str, loc: tuple[str, ...] = ()) -> None:
    """No passwords in configuration files: they end up in backups, logs and repositories."""
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and key.lower() in ("password", "passwd", "pass", "secret_value", "community"):
                where = " -> ".join((*loc, key))
                raise ConfigError(
                    f"{source}: {where}: passwords do not belong in configuration files. Use "
                    f"'{key}_env = \"VARIABLE\"' to read it from an environment variable, or 'secret = \"name\"' "
                    "to read it from the secrets file (a TOML file with mode 0600, see README)."
                )
            refuse_passwords(value, source, (*loc, str(key)))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            refuse_passwords(item, source, (*loc[:-1], f"{loc[-1] if loc else ''}[{i + 1}]"))


def read_secrets(path: str | Path) -> dict[str, str]:
    """A secrets file: ``name = "value"`` pairs, readable by its owner only (mode 0600 or stricter)."""
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: secrets file not found; create it with mode 0600") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the secrets file ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: the secrets file is not a regular file (a TOML file with mode 0600)")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: secrets file is readable by others (mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
        )
    data = read_toml(path)
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:  # the names only: a value may be a real secret
        raise ConfigError(f'{path}: secrets must be strings (name = "value"): {", ".join(bad)}')
    return data


def env_secret(var: str, source: str) -> str:
    try:
        return os.environ[var]
    except KeyError as exc:
        raise ConfigError(f"{source}: environment variable {var} is not set (it holds a credential)") from exc
