"""``python -m treemdp`` (also what ``accelerate launch -m treemdp`` runs)."""

import sys

from .cli import main

sys.exit(main())
