"""Objects a user names on the command line: ``package.module:attr`` or ``path/to/file.py:attr``.

One resolver for every "your own function" option (``--loss``, ``--gold``): a module name is
imported as Python would, with the current folder on the import path (as ``python -m`` and
``python -c`` have it, which a console script like ``treemdp`` does not); a file path is loaded
from that file. An object found outside the installed packages is named by its file, so a
``config.json`` records where the code came from and reruns from any folder.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any


def is_file_spec(spec: str) -> bool:
    """``path/to/file.py:attr`` (the part before the last ``:`` ends in ``.py``)."""
    path, sep, _ = spec.rpartition(":")
    return bool(sep) and path.endswith(".py")


def import_object(spec: str) -> tuple[Any, str]:
    """The object behind ``package.module:attr`` or ``path/to/file.py:attr``, and its canonical spec.

    The canonical spec is ``spec`` itself for a module importable from the installed packages,
    and ``/absolute/path/file.py:attr`` for a file, or for a top-level module found only in the
    current folder.

    Raises:
        ImportError: the module or file cannot be found or fails to import (its message says why).
        AttributeError: the module has no such attribute.
    """
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ImportError(f"{spec!r} is not package.module:attr or path/to/file.py:attr")
    if is_file_spec(spec):
        path = Path(target).expanduser().resolve()
        module = _module_from_file(path)
        canonical = f"{path}:{attr}"
    else:
        module, path = _module_from_name(target)
        canonical = spec if path is None else f"{path}:{attr}"
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj, canonical


def _module_from_name(name: str):
    """(module, None) when importable as is; (module, file) when found only in the current folder."""
    try:
        return importlib.import_module(name), None
    except ModuleNotFoundError as e:
        top = name.partition(".")[0]
        if e.name != top or "." in name:
            raise  # a missing dependency inside the module, or a package path: report it as is
        path = Path(os.getcwd(), f"{top}.py")
        if not path.is_file():
            raise ModuleNotFoundError(f"no module named {name!r} (nor a file {top}.py in the current folder "
                                      f"{os.getcwd()})", name=name) from None
        return _module_from_file(path.resolve()), path.resolve()


def _module_from_file(path: Path):
    """Execute ``path`` once as a module (a stable private name per file, kept in ``sys.modules``)."""
    if not path.is_file():
        raise ModuleNotFoundError(f"no file {str(path)!r}")
    name = f"treemdp_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))  # its sibling modules import, as when Python runs a script
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module
