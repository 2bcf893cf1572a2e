import importlib.util
import sys
from pathlib import Path

# The helpers (notebook_runner.py) sit beside the tests; this folder has no __init__.py.
sys.path.insert(0, str(Path(__file__).resolve().parent))

if any(importlib.util.find_spec(name) is None for name in ("nbclient", "nbformat", "ipywidgets")):
    collect_ignore_glob = ["test_*.py"]  # the lessons extra is not installed
