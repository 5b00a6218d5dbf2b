"""Gin plumbing, t5x-style: packaged search path, `--gin.X=V` rewriting, t5x's configurable names
(`ext5.t5x_names`), one-line errors, config dump.

Only the CLI layer uses this module; the model, trainer and data modules never import gin.
"""
from __future__ import annotations

import io
import logging
import os
import re
import tempfile
import tokenize
from pathlib import Path
from typing import Sequence

import gin

from ext5 import t5x_names


class _DropGinSearchNoise(logging.Filter):
    """gin logs an ERROR for every search-path entry that lacks an included file; only failures matter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


logging.getLogger().addFilter(_DropGinSearchNoise())


class ConfigError(ValueError):
    """A configuration problem, reported as one line that names the fix."""


def packaged_gin_dir() -> Path:
    """The gin files shipped with ext5: `ext5/gin` in an installed wheel, the repo's `gin/` in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "gin", here.parent / "gin"):
        if (cand / "runs").is_dir():
            return cand
    raise ConfigError(f"ext5's gin files are missing (looked in {here / 'gin'} and {here.parent / 'gin'}); "
                      f"reinstall ext5")


def search_paths(extra: Sequence[str] = ()) -> list[str]:
    """Where --gin_file names are looked up, in order: user paths, the current directory, the packaged dir
    and its models/ and runs/ subfolders (so `--gin_file=t5_1_1_base.gin` also works)."""
    base = packaged_gin_dir()
    paths = [p for e in extra for p in e.split(",") if p]
    return paths + [os.getcwd(), str(base), str(base / "models"), str(base / "runs")]


_GIN_FLAG = re.compile(r"^--gin\.([A-Za-z_][\w.]*(?:/[\w.]+)*)=(.*)$", re.S)
_BARE_PATH = re.compile(r"^[\w./:~-]*[/:.~][\w./:~-]*$")


def rewrite_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split t5x's `--gin.NAME=VALUE` flags out of argv as gin bindings `NAME = VALUE`."""
    rest, bindings = [], []
    for a in argv:
        m = _GIN_FLAG.match(a)
        if m:
            bindings.append(f"{m.group(1)} = {_maybe_quote(m.group(2))}")
        else:
            rest.append(a)
    return rest, bindings


def _maybe_quote(value: str) -> str:
    """Quote an unquoted path-like value (`--gin.MODEL_DIR=/tmp/m`), a common slip t5x rejects; anything
    gin can already parse is passed through unchanged."""
    v = value.strip()
    if _BARE_PATH.match(v) and not re.match(r"^-?\d+(\.\d*)?(e-?\d+)?$", v) and not v.startswith(("@", "%")):
        return repr(v)
    return value


def _resolve(name: str, paths: Sequence[str]) -> str:
    if os.path.isabs(name) or os.path.exists(name):
        return name
    for p in paths:
        cand = os.path.join(p, name)
        if os.path.exists(cand):
            return cand
    raise ConfigError(f"gin file {name!r} not found; searched {', '.join(paths)}; "
                      f"pass a path or add its folder with --gin_search_paths")


def _parse_file(path: str) -> None:
    """Parse one gin file; a file written with t5x's names (`from t5x import utils`, `utils.DatasetConfig`,
    ...) is parsed as its ext5 translation, under its own name so errors still point into it."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    translated = t5x_names.translate_config(text)
    if translated == text:
        gin.parse_config_file(path)
    else:
        stream = io.StringIO(translated)
        stream.name = path  # gin's error locations
        gin.parse_config(stream)


def parse(gin_files: Sequence[str], bindings: Sequence[str], extra_search_paths: Sequence[str] = ()) -> None:
    """Parse gin files and bindings (later ones win, as in t5x), turning gin's errors into ConfigError.
    t5x's configurable names are accepted in both and mean the same here (`ext5.t5x_names`)."""
    if not gin_files:
        raise ConfigError("no --gin_file given; e.g. --gin_file=local_tiny.gin (see `ext5 train --help`)")
    paths = search_paths(extra_search_paths)
    gin.clear_config()
    for p in paths:
        gin.add_config_file_search_path(p)
    files = [_resolve(f, paths) for f in gin_files]
    try:
        for f in files:
            _parse_file(f)
        gin.parse_config([t5x_names.translate_binding(b) for b in bindings])
        gin.finalize()
    except t5x_names.T5xNameError as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        msg = str(e).splitlines()[0]
        m = re.match(r"(\w+)/macro\.value set to `%gin\.REQUIRED`", msg)
        if m:
            raise ConfigError(f"missing required gin macro {m.group(1)}: set it with "
                              f"--gin.{m.group(1)}=... or in your gin file") from None
        m = re.match(r"No configurable matching '([\w.]+)'", msg)
        hint = t5x_names.hint_for_unknown(m.group(1)) if m else None
        if hint:
            raise ConfigError(hint) from None
        raise ConfigError(f"gin: {' '.join(str(e).split())}") from None
    except (NameError, AttributeError) as e:  # dynamic registration: an unimported module or unknown name
        first = str(e).splitlines()[0]
        m = re.search(r"selector ([\w.]+);|'(\w+)' was not provided", first)
        hint = t5x_names.hint_for_unknown(next(g for g in m.groups() if g)) if m else None
        raise ConfigError(hint or f"gin: {' '.join(str(e).split())}") from None
    except (SyntaxError, tokenize.TokenError) as e:
        where = f"{getattr(e, 'filename', None) or 'bindings'}:{getattr(e, 'lineno', None) or '?'}"
        raise ConfigError(f"gin syntax error at {where}: {' '.join(str(e).split())}; "
                          f"string values need quotes, e.g. --gin.MODEL_DIR=\"'/tmp/m'\"") from None
    except OSError as e:
        raise ConfigError(f"gin: {' '.join(str(e).split())}") from None
    except ImportError as e:
        raise ConfigError(f"gin file imports a module that is missing: {e}; install it or fix the import") from None


def macro(name: str, default=None):
    """The value of gin macro `name`, or `default` if it is not set. A macro bound to a call (`@fn()`, e.g.
    `MIXTURE_OR_TASK_NAME = @mixtures.ext5_mixture()`) is evaluated, as gin does when it passes it on."""
    try:
        value = gin.query_parameter(f"{name}/macro.value")
    except ValueError:
        return default
    if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
        value = value.scoped_configurable_fn()
    return value


def write_config(model_dir: str, text: str | None = None) -> str:
    """Write the resolved gin config to MODEL_DIR/config.gin atomically (temp file + rename)."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, "config.gin")
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".config.gin.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text if text is not None else gin.config_str())
    os.replace(tmp, path)
    return path
