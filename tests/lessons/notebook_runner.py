"""Run a notebook with nbclient, then exercise every widget control in the same kernel.

The probe cell appended after the notebook's own cells finds every ipywidgets control (anything
with a ``value`` and ``options`` or ``min``/``max``), moves it to another value and checks that
the data of some matplotlib figure changed (lines, bars, images, scatter points, titles). The
callbacks run synchronously in the kernel when a value is set, exactly as when a user drags a
slider, so this tests the same code path without a browser.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
LESSONS = ROOT / "lessons"
MARKER = "WIDGET-PROBE:"

PROBE = r'''
import gc as _gc, hashlib as _hashlib, json as _json, time as _time
import ipywidgets as _w
import matplotlib.figure as _mf
import numpy as _np

_probe_started = _time.perf_counter()
_notebook_cpu = _time.process_time()  # the kernel's CPU seconds for the notebook (steady on a busy machine)


def _fingerprint():
    h = _hashlib.sha1()
    for fig in [o for o in _gc.get_objects() if isinstance(o, _mf.Figure)]:
        h.update(repr(fig._suptitle.get_text() if fig._suptitle is not None else "").encode())
        for ax in fig.axes:
            h.update(ax.get_title().encode())
            for line in ax.lines:
                h.update(_np.asarray(line.get_xydata(), dtype=float).round(9).tobytes())
            for patch in ax.patches:
                h.update(_np.asarray(patch.get_patch_transform().get_matrix(), dtype=float).round(9).tobytes())
            for collection in ax.collections:
                h.update(_np.asarray(collection.get_offsets(), dtype=float).round(9).tobytes())
                if collection.get_array() is not None:
                    h.update(_np.asarray(collection.get_array(), dtype=float).round(9).tobytes())
            for image in ax.images:
                h.update(_np.asarray(image.get_array(), dtype=float).round(9).tobytes())
            for text in ax.texts:
                h.update(text.get_text().encode())
    return h.hexdigest()


def _other_value(control):
    if hasattr(control, "options") and len(control.options) > 1:
        values = [o[1] if isinstance(o, tuple) else o for o in control.options]
        return values[(values.index(control.value) + 1) % len(values)]
    if isinstance(control, _w.FloatLogSlider):
        low, high = control.base ** control.min, control.base ** control.max
        return low if control.value != low else high
    if hasattr(control, "min") and hasattr(control, "max"):
        return control.min if control.value != control.min else control.max
    return None


_instances = getattr(_w.widgets.widget, "_instances", None) or _w.Widget.widgets
_controls = [c for c in list(_instances.values())
             if hasattr(c, "value") and _other_value(c) is not None
             and not isinstance(c, (_w.Output, _w.FloatProgress, _w.IntProgress))]  # progress bars are not controls
_defaults = {id(c): c.value for c in _controls}
_report = {}
_move_seconds, _move_cpu, _move_steps = [], [], {}
import torch.optim.optimizer as _optimizer
_steps = [0]
_hook = _optimizer.register_optimizer_step_pre_hook(lambda *_: _steps.__setitem__(0, _steps[0] + 1))
for _c in _controls:
    _before = _fingerprint()
    _t, _t_cpu, _s = _time.perf_counter(), _time.process_time(), _steps[0]
    _c.value = _other_value(_c)  # the callbacks (update the artists, encode the PNG) run here
    _move_seconds.append(_time.perf_counter() - _t)
    _move_cpu.append(_time.process_time() - _t_cpu)
    _changed = _fingerprint() != _before
    if not _changed:  # another control may have made this one moot (tabular ignores hidden size): reset all, retry
        for _d in _controls:
            if _d is not _c and _d.value != _defaults[id(_d)]:
                _d.value = _defaults[id(_d)]
        _before = _fingerprint()
        _c.value = _other_value(_c)
        _changed = _fingerprint() != _before
    _report[f"{type(_c).__name__}({_c.description!r})"] = _changed
    _move_steps[f"{type(_c).__name__}({_c.description!r})"] = _steps[0] - _s  # 0: drawn from a precomputed grid
_hook.remove()
print("WIDGET-PROBE:" + _json.dumps({"controls": _report, "seconds": _time.perf_counter() - _probe_started,
                                     "move_seconds": _move_seconds, "move_cpu": _move_cpu, "move_steps": _move_steps,
                                     "notebook_cpu": _notebook_cpu}))
'''


def _cell_timing(nb, started_at: float, elapsed: float) -> str:
    """Where a notebook's wall time went (nbclient's per-cell timestamps): kernel start, slowest cell."""
    from datetime import datetime

    def at(cell, key):
        value = cell.get("metadata", {}).get("execution", {}).get(key)
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None

    code = [c for c in nb.cells if c.cell_type == "code"]
    spans = [(at(c, "iopub.status.idle") or at(c, "shell.execute_reply") or 0) - (at(c, "iopub.status.busy") or 0)
             for c in code]
    first = at(code[0], "iopub.status.busy") if code else None
    last = at(code[-1], "iopub.status.idle") if code else None
    slowest = max(range(len(spans)), key=spans.__getitem__) if spans else 0
    return (f"kernel start {first - started_at:.1f} s, slowest cell [{slowest + 1}] {spans[slowest]:.1f} s, "
            f"after the last cell {started_at + elapsed - last:.1f} s" if first and last else "no cell timing")


def run_notebook(path: Path, *, probe_widgets: bool = True, timeout: int = 300, extra: str | None = None):
    """Execute ``path``; return (executed notebook, probe report or None, seconds for the notebook).

    Raises AssertionError naming the first cell that raised.
    """
    nb = nbformat.read(str(path), as_version=4)
    n_cells = len(nb.cells)
    if probe_widgets:
        nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    if extra is not None:
        nb.cells.append(nbformat.v4.new_code_cell(extra))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    started, started_at = time.perf_counter(), time.time()
    client.execute()
    elapsed = time.perf_counter() - started
    nb.metadata["test_timing"] = _cell_timing(nb, started_at, elapsed)
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                number = sum(c.cell_type == "code" for c in nb.cells[:i + 1])  # as JupyterLab shows it
                where = f"cell [{number}]" if i < n_cells else "the test's probe cell"
                raise AssertionError(f"{path.name}: {where} raised {output['ename']}: {output['evalue']}\n"
                                     + cell.source[:400])
    report = None
    if probe_widgets:
        for output in nb.cells[n_cells].get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith(MARKER):
                    report = json.loads(line[len(MARKER):])
        assert report is not None, f"{path.name}: the widget probe printed nothing"
        elapsed -= report["seconds"]
    return nb, report, elapsed


def printed(nb, start: int = 0) -> str:
    """All stream text of the cells from ``start`` on."""
    return "".join(o.get("text", "") for cell in nb.cells[start:] for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream")
