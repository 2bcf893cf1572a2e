"""Checks for the classroom assignments in ``lessons/assignments/``.

Each exercise has a check, a plain function that takes the student's function (or answer) and
returns a :class:`Result` with one of three outcomes — not attempted, incorrect (and why),
correct — by comparing with the library's own function on random inputs. Nothing is printed and
nothing is put into the notebook's namespace; a notebook cell shows the Result it gets back::

    from treemdp.exercises import check_dpo_g, hint
    check_dpo_g(dpo_g)        # -> a1.dpo_g: correct: matches treemdp.losses.dpo_g on ...
    hint("a1.dpo_g")          # first hint; hint("a1.dpo_g", 2) for the next

The library functions a check compares with are bound when this package is imported and
verified at every check (:class:`.core.Reference`), so a notebook that assigns
``treemdp.losses.dpo_g = dpo_g`` is still compared with the library's own; an answer that changes
one of its inputs in place, or calls the library function its exercise teaches, is incorrect.

Assignments: a1 the losses (:mod:`.losses`), a2 exact enumeration (:mod:`.enumeration`),
a3 a silent-bug hunt (:mod:`.bugs`); lesson 8's exact best-of-n KL (:mod:`.lab`); lesson 9's CHES
exercise (:mod:`.displacement`). ``treemdp grade`` runs a notebook and calls :func:`check_namespace`
on what it defined.
"""

from .bugs import BUGS, VARIANTS, check_diagnosis, check_sanity_check, mystery_train
from .core import (EXERCISES, Exercise, Outcome, Result, assignment_exercises, check_namespace,
                   get_exercise, hint)
from .displacement import check_ches_score
from .enumeration import check_enumerate_log_probs, check_ood_mass, check_sequence_log_prob
from .lab import check_bon_kl
from .losses import check_dpo_g, check_ipo_g, check_preference_loss, check_slic_g

__all__ = [
    "Outcome", "Result", "Exercise", "EXERCISES", "hint", "get_exercise", "assignment_exercises",
    "check_namespace", "check_dpo_g", "check_ipo_g", "check_slic_g", "check_preference_loss",
    "check_sequence_log_prob", "check_enumerate_log_probs", "check_ood_mass",
    "check_diagnosis", "check_sanity_check", "mystery_train", "BUGS", "VARIANTS", "check_ches_score",
    "check_bon_kl",
]
