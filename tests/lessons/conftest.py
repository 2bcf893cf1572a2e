import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LESSONS = ROOT / "lessons"
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("nbclient", reason="the lessons extra is not installed")
pytest.importorskip("ipywidgets", reason="the lessons extra is not installed")
