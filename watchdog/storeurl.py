"""Where the state store is: TOML files and database URLs, without SQLAlchemy or pydantic
(the status CLI starts with this module)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from watchdog.exceptions import ConfigError


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; errors name the file and, for syntax errors, the line."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(str(path), ["is a directory, expected a TOML file"]) from None
    except PermissionError:
        raise ConfigError(str(path), ["permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"invalid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None


def default_sqlite_url(directory: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(directory).resolve() / 'hermes.db'}"
