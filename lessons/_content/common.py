"""Cells shared by several notebooks (imported by the builder, not by the notebooks)."""

SETUP = """
%matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display
from matplotlib.figure import Figure

import treemdp
"""

WIDGET_NOTE = """
*How the live plot works:* each control calls a library function again with its new value and
redraws one matplotlib `Figure` inside an `ipywidgets.Output` (`clear_output(wait=True)` swaps
the picture only when the new one is ready, so it does not flicker). Nothing is cached: what you
see is a fresh run.
"""
