"""Cells shared by several notebooks (imported by the builder, not by the notebooks)."""

SETUP = """
%matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

import treemdp
from treemdp.plots import live_plot
"""

WIDGET_NOTE = """
*How the live plot works:* `treemdp.plots.live_plot` calls the drawing function again whenever a
control changes; it re-runs a library function with the new value and redraws one matplotlib
`Figure` inside an `ipywidgets.Output` (`clear_output(wait=True)` swaps
the picture only when the new one is ready, so it does not flicker). Nothing is cached: what you
see is a fresh run.
"""
