"""The objective registry: how a direct-alignment objective is named, parametrised, checked and found.

An *objective* maps a :class:`PreferenceBatch` (tensors ``[..., B]``: the last dim is the batch of
pairs, leading dims are stacked independent runs) and ``beta`` to per-example losses ``[..., B]``.
Every objective lives in one registry, :data:`OBJECTIVES`, and is reached by name, by a spec string
(read by :func:`treemdp.specs.parse_spec`) or as ``package.module:attr``::

    get_objective("cdpo(epsilon=0.2)")
    get_objective("trl(loss_type=[sigmoid, sft], loss_weights=[1, 0.5])")  # TRL's RPO
    get_objective("mypackage.losses:my_objective")                          # yours

A new objective is five lines, from anywhere (its keyword defaults become its parameters)::

    from treemdp.losses import register_objective
    import torch.nn.functional as F

    @register_objective
    def margin_dpo(batch, beta, gamma=0.5):
        '''-log sigmoid(beta*h - gamma): DPO with a target margin gamma.'''
        return -F.logsigmoid(beta * batch.h - gamma)

The math of the built-in objectives is in :mod:`treemdp.losses` (the paper's g, GPO, variants) and
:mod:`treemdp.trl_losses` (TRL's loss types), which register them here. ``treemdp.losses``
re-exports every name of this module.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

import torch

from .errors import UserError
from .settings import check_beta, check_like
from .specs import IDENTIFIER, format_value, parse_spec, qualified_name

LossFn = Callable[[torch.Tensor], torch.Tensor]
#: beta: a Python float (checked by :func:`check_beta`) or a tensor broadcastable to [..., B]
#: (e.g. [R, 1], one beta per stacked run; the caller checks it).
Beta = Union[float, torch.Tensor]


# --------------------------------------------------------------------------------------------
# The batch of preference pairs
# --------------------------------------------------------------------------------------------

def preference_h(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """The log-ratio margin h of eq. 4; every tensor is [..., B], result [..., B]."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


@dataclass(frozen=True)
class PreferenceBatch:
    """Sequence log-probs of a batch of preference pairs, each a tensor [..., B].

    The last dim is the batch of pairs; leading dims are independent stacked runs ([R, B] in the
    toy engine). ``chosen_lengths`` / ``rejected_lengths`` are completion token counts (TRL passes
    ``torch.long`` [B]) broadcastable to [..., B]; only length-normalising objectives need them.
    """

    policy_chosen: torch.Tensor  # log pi(y_w | x)
    policy_rejected: torch.Tensor  # log pi(y_l | x)
    ref_chosen: torch.Tensor  # log ref(y_w | x)
    ref_rejected: torch.Tensor  # log ref(y_l | x)
    chosen_lengths: Optional[torch.Tensor] = None  # |y_w| in tokens
    rejected_lengths: Optional[torch.Tensor] = None  # |y_l| in tokens

    def __post_init__(self):
        given = [(name, getattr(self, name)) for name in self.__dataclass_fields__]
        for name, value in given:
            if not isinstance(value, torch.Tensor) and not (value is None and name.endswith("_lengths")):
                raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
        shapes = [tuple(value.shape) for _, value in given if value is not None]
        if len(set(shapes)) > 1:  # the common case, equal shapes, skips the (slow) broadcast check
            try:
                torch.broadcast_shapes(*shapes)
            except RuntimeError:
                raise ValueError(f"log-prob and length shapes do not broadcast together: {shapes}") from None

    @property
    def chosen_logratio(self) -> torch.Tensor:
        """log pi(y_w)/ref(y_w), [..., B]."""
        return self.policy_chosen - self.ref_chosen

    @property
    def rejected_logratio(self) -> torch.Tensor:
        """log pi(y_l)/ref(y_l), [..., B]."""
        return self.policy_rejected - self.ref_rejected

    @property
    def h(self) -> torch.Tensor:
        """h of paper eq. 4, [..., B]."""
        return preference_h(self.policy_chosen, self.policy_rejected, self.ref_chosen, self.ref_rejected)

    def per_token(self, value: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``value / max(lengths, 1)`` in ``value``'s dtype (TRL's length normalisation), [..., B]."""
        return value / lengths.to(value.dtype).clamp(min=1.0)


@dataclass(frozen=True)
class Param:
    """One parameter of an objective: its default, a one-line doc and a check (:mod:`treemdp.settings`)."""

    default: Any
    doc: str = ""
    check: Optional[Callable[[Any], Any]] = None  # None: implied by the default's type

    def __post_init__(self):
        if self.check is None:
            object.__setattr__(self, "check", check_like(self.default))


# --------------------------------------------------------------------------------------------
# Objectives and the registry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class Objective:
    """A named direct-alignment objective: ``fn(batch, beta, **values) -> Tensor [..., B]``.

    Attributes:
        name: the registry name (or ``package.module:attr`` for objectives loaded from outside).
        fn: per-example losses from a :class:`PreferenceBatch` and beta; may include a term on the
            chosen answer's log-likelihood (RPO).
        params: parameter name -> :class:`Param` (default, one-line doc, check).
        formula: the loss as text, in this module's symbols.
        paper: citation.
        batch_coupled: the loss mixes the examples of a batch (TRL's ``aot``, ``sft``): only its
            mean over the last dim is meaningful; it never mixes leading (run) dims.
        needs_lengths: calling it without ``chosen_lengths``/``rejected_lengths`` is an error.
        family: ``paper``, ``gpo``, ``variant``, ``trl`` or ``custom`` (for tables).
        g: the scalar g when the objective is ``g(beta * h)`` (eq. 4), else None.
        refine: for objectives whose validity or flags depend on several parameters together
            (``trl``): checks the values and returns ``{"batch_coupled": .., "needs_lengths": ..}``.
        values: the bound value of every parameter (defaults filled in; set by :meth:`bind`).
        details: extra text for :func:`describe`.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    params: Mapping[str, Param] = field(default_factory=dict)
    formula: str = ""
    paper: str = ""
    batch_coupled: bool = False
    needs_lengths: bool = False
    family: str = "custom"
    g: Optional[LossFn] = None
    refine: Optional[Callable[[Mapping[str, Any]], Mapping[str, bool]]] = None
    values: Mapping[str, Any] = field(default_factory=dict)
    details: str = ""

    def __post_init__(self):
        unknown = [key for key in self.values if key not in self.params]
        if unknown:
            valid = ", ".join(self.params) or "none"
            raise ValueError(f"{self.name}: unknown parameter {', '.join(map(repr, unknown))}; valid: {valid}")
        values = {}
        for key, param in self.params.items():
            raw = self.values.get(key, param.default)
            try:
                values[key] = param.check(raw)
            except ValueError as e:
                raise ValueError(f"{self.name}: {key} {e}") from None
        object.__setattr__(self, "values", values)
        if self.refine is not None:
            try:
                flags = self.refine(values)
            except ValueError as e:
                raise ValueError(f"{self.name}: {e}") from None
            for key, flag in flags.items():
                object.__setattr__(self, key, flag)

    @property
    def defaults(self) -> dict[str, Any]:
        """Parameter name -> default."""
        return {key: param.default for key, param in self.params.items()}

    @property
    def param_docs(self) -> dict[str, str]:
        """Parameter name -> one-line doc."""
        return {key: param.doc for key, param in self.params.items()}

    def bind(self, **params: Any) -> "Objective":
        """A copy with these parameter values (checked: unknown names and bad values raise)."""
        return dataclasses.replace(self, values={**self.values, **params})

    @property
    def spec(self) -> str:
        """Canonical spec: ``name`` or ``name(k=v, ...)`` with the non-default values, in order."""
        changed = [f"{key}={format_value(value)}" for key, value in self.values.items()
                   if value != self.params[key].check(self.params[key].default)]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def __call__(self, batch: PreferenceBatch, beta: Beta) -> torch.Tensor:
        """Per-example losses [..., B] (batch-coupled objectives: only their mean is per batch)."""
        if not isinstance(beta, torch.Tensor):
            beta = check_beta(beta)
        if self.needs_lengths and (batch.chosen_lengths is None or batch.rejected_lengths is None):
            raise ValueError(f"loss {self.spec!r} needs chosen_lengths and rejected_lengths "
                             "(completion token counts)")
        return self.fn(batch, beta, **self.values)

    def __hash__(self) -> int:
        return hash((self.name, self.spec))

    def __repr__(self) -> str:
        return f"Objective({self.spec!r})"


@dataclass(frozen=True)
class GForm:
    """The eq. 4 objective of a scalar g: ``g(beta * h)`` per example."""

    g: LossFn

    def __call__(self, batch: PreferenceBatch, beta: Beta) -> torch.Tensor:
        return self.g(beta * batch.h)  # paper eq. 4; [..., B]


#: THE registry: every objective by name. Add to it with :func:`register_objective`.
OBJECTIVES: dict[str, Objective] = {}
#: spec string -> (its name, the registry entry it was built from, the objective): training loops
#: name their loss every step; an entry is rebuilt when the registry entry under that name changes.
_SPEC_CACHE: dict[str, tuple[str, Optional[Objective], Objective]] = {}


def _params_of(fn: Callable, params: Optional[Mapping[str, Any]]) -> dict[str, Param]:
    """The parameters of ``fn(batch, beta, ...)``: given explicitly, or its keyword defaults."""
    signature = inspect.signature(fn)
    positional = list(signature.parameters.values())
    if len(positional) < 2:
        raise ValueError(f"an objective function takes (batch, beta, ...); {fn.__name__} takes {signature}")
    rest = {p.name: p for p in positional[2:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in positional)
    if params is None:
        missing = [name for name, p in rest.items() if p.default is p.empty]
        if missing:
            raise ValueError(f"parameters of objective {fn.__name__} need defaults: {', '.join(missing)}")
        return {name: Param(p.default) for name, p in rest.items()}
    out = {}
    for name, spec in params.items():
        if name not in rest and not takes_any:
            raise ValueError(f"objective {fn.__name__} has no parameter {name!r}")
        out[name] = spec if isinstance(spec, Param) else Param(*spec) if isinstance(spec, tuple) else Param(spec)
    return out


def _first_line(text: Optional[str]) -> str:
    return (text or "").strip().split("\n")[0].strip()


def register_objective(fn: Union[Callable, Objective, None] = None, /, *, name: Optional[str] = None,
                       formula: Optional[str] = None, paper: str = "",
                       params: Optional[Mapping[str, Any]] = None, batch_coupled: bool = False,
                       needs_lengths: bool = False, family: str = "custom", g: Optional[LossFn] = None,
                       refine=None, details: str = "", replace: bool = False):
    """Register an objective; use as ``@register_objective`` or ``@register_objective(name=...)``.

    Args:
        fn: ``fn(batch, beta, **params) -> Tensor [..., B]`` (or a ready :class:`Objective`).
        name: registry name (default: the function's name); letters, digits and ``_``.
        formula: the loss as text (default: the first line of the docstring).
        paper: citation.
        params: name -> :class:`Param`, ``(default, doc[, check])`` or a default. Default: the
            function's keyword parameters and their defaults.
        batch_coupled, needs_lengths, family, g, refine, details: see :class:`Objective`.
        replace: overwrite an objective already registered under this name.

    Returns:
        The registered :class:`Objective` (callable as ``objective(batch, beta)``).
    """

    def add(objective: Objective) -> Objective:
        if not IDENTIFIER.match(objective.name):
            raise ValueError(f"objective name {objective.name!r} must be letters, digits and _")
        if objective.name in OBJECTIVES and not replace:
            raise ValueError(f"objective {objective.name!r} is already registered; pass replace=True to overwrite it")
        OBJECTIVES[objective.name] = objective
        return objective

    def wrap(function: Callable) -> Objective:
        return add(Objective(
            name=name or function.__name__, fn=function, params=_params_of(function, params),
            formula=formula if formula is not None else _first_line(function.__doc__), paper=paper,
            batch_coupled=batch_coupled, needs_lengths=needs_lengths, family=family, g=g,
            refine=refine, details=details))

    if isinstance(fn, Objective):
        return add(fn)
    return wrap if fn is None else wrap(fn)


def register_g(name: str, g: LossFn, *, formula: str, paper: str, family: str) -> Objective:
    """Register the eq. 4 objective ``g(beta * h)`` of a scalar g."""
    return register_objective(Objective(name=name, fn=GForm(g), formula=formula, paper=paper,
                                        family=family, g=g))


def _qualified_name(g: Callable) -> str:
    """``module:qualname`` for an importable function (so its spec reloads it), else its name."""
    module, qualname = getattr(g, "__module__", None), getattr(g, "__qualname__", None)
    if module and qualname and "<" not in qualname and module != "__main__":
        return f"{module}:{qualname}"
    return getattr(g, "__name__", type(g).__name__)


def _required_arguments(fn: Callable) -> int:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return 1
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def objective_from_g(g: LossFn, name: Optional[str] = None) -> Objective:
    """Wrap a scalar ``g`` (a callable on tensors) as the eq. 4 objective ``g(beta * h)``."""
    name = name or _qualified_name(g)
    if _required_arguments(g) > 1:
        raise ValueError(f"loss {name} takes {_required_arguments(g)} arguments but a plain g takes one "
                         "(x = beta*h); register fn(batch, beta, ...) with register_objective and name it")
    return Objective(name=name, fn=GForm(g), formula=f"g(beta*h), g = {name}", family="custom", g=g)


# --------------------------------------------------------------------------------------------
# Finding an objective: by object, name, spec string or ``package.module:attr``
# --------------------------------------------------------------------------------------------

def _load(path: str, params: Mapping[str, Any]) -> Objective:
    """The objective behind ``package.module:attr`` or ``file.py:attr`` (an Objective, or a plain
    callable g), named by its canonical spec (:func:`treemdp.imports.import_object`)."""
    from .imports import import_object
    try:
        target, path = import_object(path)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load loss {path!r}: {e}") from None
    if isinstance(target, Objective):  # named by its path, so that its spec loads it in a new process
        return dataclasses.replace(target, name=path, values={**target.values, **params})
    if callable(target):
        if params:
            raise ValueError(f"loss {path!r} is a plain function g(x); it takes no parameters")
        return objective_from_g(target, name=path)
    raise ValueError(f"loss {path!r} is neither an Objective nor a callable g")


def get_objective(loss: Union[str, Objective, LossFn]) -> Objective:
    """The objective for an :class:`Objective`, a registered name, a spec string
    ``"name(k=v, ...)"``, ``"package.module:attr"``, or a plain callable g (used as g(beta*h)).

    Raises:
        ValueError: unknown names (listing the valid ones), unknown parameters, bad values.
    """
    if isinstance(loss, Objective):
        return loss
    if callable(loss):
        return objective_from_g(loss)
    if not isinstance(loss, str):
        raise ValueError(f"loss must be a name, a spec string, an Objective or a callable g; got {loss!r}")
    name, entry, objective = _SPEC_CACHE.get(loss, (None, None, None))
    if objective is None or OBJECTIVES.get(name) is not entry:  # new, or the registry changed since
        name, objective = _objective_for_spec(loss)
        _SPEC_CACHE[loss] = (name, OBJECTIVES.get(name), objective)
    return objective


def _objective_for_spec(spec: str) -> tuple[str, Objective]:
    """The name a spec starts with, and its objective."""
    name, params = parse_spec(spec)
    if name in OBJECTIVES:
        return name, OBJECTIVES[name].bind(**params) if params else OBJECTIVES[name]
    if ":" in name:
        return name, _load(name, params)
    raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(OBJECTIVES)} "
                     "(or 'package.module:attr' or 'path/to/file.py:attr')")


def check_loss(loss: Union[str, Objective, LossFn]) -> Union[str, Objective, LossFn]:
    """``loss`` if :func:`get_objective` finds it, else its message as a UserError (a settings check)."""
    try:
        get_objective(loss)
    except ValueError as e:
        raise UserError(str(e)) from None
    return loss


def objectives_table() -> list[dict[str, Any]]:
    """One row per registered objective: name, formula, params (with defaults), docs, paper, flags."""
    return [dict(name=o.name, formula=o.formula, params=o.defaults, param_docs=o.param_docs,
                 paper=o.paper, family=o.family, batch_coupled=o.batch_coupled,
                 needs_lengths=o.needs_lengths) for o in OBJECTIVES.values()]


def describe(loss: Union[str, Objective, LossFn]) -> str:
    """A short text about one objective (name, spec or object): formula, parameters, paper."""
    o = get_objective(loss)
    lines = [f"{o.spec}  [{o.family}]", f"  loss: {o.formula}"]
    for key, param in o.params.items():
        lines.append(f"  {key} = {format_value(o.values[key])}  (default {format_value(param.default)}): {param.doc}")
    flags = [text for flag, text in ((o.batch_coupled, "batch-coupled: only the batch mean is meaningful"),
                                     (o.needs_lengths, "needs chosen_lengths/rejected_lengths")) if flag]
    lines += [f"  {text}" for text in flags]
    if o.paper:
        lines.append(f"  paper: {o.paper}")
    if o.details:
        lines.append(o.details)
    return "\n".join(lines)



def loss_spec(loss) -> str:
    """How ``config.json`` writes a loss: its spec string, or ``module:function`` for a callable.

    A callable defined in a notebook or script cannot be imported back; it is written as
    ``<name>`` and ``treemdp train --config`` then asks for a registered name instead.
    """
    if isinstance(loss, str):
        return loss
    spec = getattr(loss, "spec", None)
    if isinstance(spec, str):
        return spec
    return qualified_name(loss) or f"<{getattr(loss, '__qualname__', None) or type(loss).__name__}>"
