"""Direct alignment objectives: one registry, used by the toy track and the LLM track alike.

For a preferred answer y_w and a dispreferred y_l (Rafailov et al. 2024, eq. 4),

    h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)]
    L = g(beta * h)

with one convex ``g`` per algorithm (the paper's convention):

    DPO   g(x) = -log sigmoid(x)     (Bradley-Terry; Rafailov et al., 2023)
    IPO   g(x) = (x - 1)^2           (Azar et al., 2023, rescaled; see :func:`ipo_g`)
    SLiC  g(x) = max(0, 1 - x)       (hinge; Zhao et al., 2023)

Pseudocode of one DAA step, for a batch of preferences::

    pi_w, pi_l   = sequence log-probs of chosen / rejected under the policy
    ref_w, ref_l = the same under the frozen reference (no gradient)
    loss = mean(objective(PreferenceBatch(pi_w, pi_l, ref_w, ref_l), beta))
    loss.backward(); optimiser.step()

An *objective* maps a :class:`PreferenceBatch` (tensors ``[..., B]``: the last dim is the batch of
pairs, leading dims are stacked independent runs) and ``beta`` to per-example losses ``[..., B]``.
Not every objective is of the form ``g(beta * h)``: DPOP penalises the chosen log-ratio, RPO adds
the chosen answer's NLL, TRL's ``aot`` sorts the batch. Every objective lives in one registry,
:data:`OBJECTIVES`, and is reached by name or by a spec string::

    preference_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1, loss="cdpo(epsilon=0.2)")
    preference_loss(..., loss="trl(loss_type=[sigmoid, sft], loss_weights=[1, 0.5])")  # TRL's RPO
    preference_loss(..., loss="mypackage.losses:my_objective")                          # yours

A new objective is five lines, from anywhere (its keyword defaults become its parameters)::

    from treemdp.losses import register_objective
    import torch.nn.functional as F

    @register_objective
    def margin_dpo(batch, beta, gamma=0.5):
        '''-log sigmoid(beta*h - gamma): DPO with a target margin gamma.'''
        return -F.logsigmoid(beta * batch.h - gamma)

after which ``loss="margin_dpo(gamma=1)"`` works wherever a loss is named. The families:

- the paper's ``dpo``, ``ipo``, ``slic``; GPO's ``exponential``, ``truncated_quadratic``,
  ``savage`` (Tang et al. 2024); ``cdpo``, ``dpop``, ``chipo``, ``rpo``;
- ``trl``: every ``loss_type`` of TRL 1.16's ``DPOTrainer`` with its ``f_divergence_type``,
  ``label_smoothing`` and weighted combinations (:func:`trl_loss`), equal to TRL's numbers.

``treemdp losses`` / :func:`objectives_table` list them with their formulas and parameters.
This module holds only tensor math: the toy track feeds it exact enumerated log-probs, the LLM
track (``treemdp.llm``) summed token log-probs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn.functional as F

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


def check_beta(beta: float) -> float:
    """Return ``beta`` as a float if it is finite and > 0, else raise ValueError naming it."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a number, got {beta!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return value


# --------------------------------------------------------------------------------------------
# Parameters and their checks
# --------------------------------------------------------------------------------------------
# A check takes a raw value (from Python or a spec string) and returns the cleaned value, or raises
# ValueError saying what is wrong; the objective adds its own and the parameter's name.

def check_real(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
               high_open: bool = False, allow_inf: bool = False) -> Callable[[Any], float]:
    """A check for a real number in [low, high] (ends open on request; finite unless allow_inf)."""
    where = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {value!r}")
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise ValueError(f"must be a finite number, got {value!r}")
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise ValueError(f"must be a number in {where}, got {value!r}")
        return value

    return check


def check_choice(*options: str) -> Callable[[Any], str]:
    """A check for one of the given strings."""

    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {value!r}")
        return value

    return check


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _check_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    return value


def _check_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _check_like(default: Any) -> Callable[[Any], Any]:
    """The check implied by a default's type (for objectives registered without explicit checks)."""
    if isinstance(default, bool):
        return _check_bool
    if isinstance(default, int):
        return _check_int
    if isinstance(default, float):
        return check_real(allow_inf=math.isinf(default))
    if isinstance(default, str):
        return _check_str
    return lambda value: value


@dataclass(frozen=True)
class Param:
    """One parameter of an objective: its default, a one-line doc and a check (see above)."""

    default: Any
    doc: str = ""
    check: Optional[Callable[[Any], Any]] = None  # None: implied by the default's type

    def __post_init__(self):
        if self.check is None:
            object.__setattr__(self, "check", _check_like(self.default))


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

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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
        if not _NAME.match(objective.name):
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


def _register_g(name: str, g: LossFn, *, formula: str, paper: str, family: str) -> Objective:
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
# Spec strings: "name", "name(k=v, ...)", "package.module:attr"
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:(?P<punct>[()\[\],=])|(?P<quoted>"[^"]*"|'[^']*')|(?P<bare>[^\s()\[\],="']+))""")
_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)\Z", re.IGNORECASE)
_BARE = re.compile(r"[^\s()\[\],=\"']+\Z")
_SPEC_NAME = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?\Z")
_LITERALS = {"true": True, "false": False, "none": None, "null": None}


def _literal(text: str) -> Any:
    """A bare spec value: true/false/none, an int, a float (1e-3, inf, nan) or a string."""
    if text.lower() in _LITERALS:
        return _LITERALS[text.lower()]
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def _tokens(spec: str) -> list[tuple[str, str]]:
    out, at = [], 0
    while at < len(spec.rstrip()):
        match = _TOKEN.match(spec, at)
        if match is None:
            raise ValueError(f"bad loss spec {spec!r}: cannot read {spec[at:].strip()!r}")
        out.append((match.lastgroup, match.group(match.lastgroup)))
        at = match.end()
    return out


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name(k=v, ...)"`` into ``(name, {k: v})``.

    Values: ints, floats (``1e-3``, ``inf``, ``nan``), ``true``/``false``/``none``, bare or quoted
    strings, lists ``[a, b]``. ``name`` may be ``package.module:attr``.
    """
    if not isinstance(spec, str):
        raise ValueError(f"a loss spec is a string, got {type(spec).__name__}")
    tokens, at = _tokens(spec), 0

    def fail(what: str):
        raise ValueError(f"bad loss spec {spec!r}: {what}")

    def peek() -> tuple[str, str]:
        return tokens[at] if at < len(tokens) else ("end", "")

    def take(text: Optional[str] = None) -> tuple[str, str]:
        nonlocal at
        kind, value = peek()
        if kind == "end":
            fail(f"missing {text!r} at the end" if text else "unexpected end")
        if text is not None and value != text:
            fail(f"expected {text!r} but found {value!r}")
        at += 1
        return kind, value

    def value() -> Any:
        kind, text = take()
        if text == "[":
            items = []
            while peek()[1] != "]":
                items.append(value())
                if peek()[1] != "]":
                    take("]" if peek()[0] == "end" else ",")
            take("]")
            return items
        if kind == "quoted":
            return text[1:-1]
        if kind == "bare":
            return _literal(text)
        fail(f"expected a value but found {text!r}")

    kind, name = take()
    if kind != "bare" or not _SPEC_NAME.match(name):
        fail("expected a loss name")
    params: dict[str, Any] = {}
    if peek()[1] == "(":
        take("(")
        while peek()[1] != ")":
            kind, key = take()
            if kind != "bare" or not _NAME.match(key):
                fail(f"expected a parameter name but found {key!r}")
            if key in params:
                fail(f"parameter {key!r} given twice")
            take("=")
            params[key] = value()
            if peek()[1] != ")":
                take(")" if peek()[0] == "end" else ",")
        take(")")
    if peek()[0] != "end":
        fail(f"unexpected {peek()[1]!r} after the loss")
    return name, params


def format_value(value: Any) -> str:
    """A value as :func:`parse_spec` reads it back (``true``, ``0.001``, ``[a, b]``, ``'x y'``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    text = str(value)
    if _BARE.match(text) and _literal(text) == text:
        return text
    return f'"{text}"' if "'" in text else f"'{text}'"


def _load(path: str, params: Mapping[str, Any]) -> Objective:
    """The objective behind ``package.module:attr`` (an Objective, or a plain callable g)."""
    module_name, _, attr = path.partition(":")
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
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
                     "(or 'package.module:attr')")


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


# --------------------------------------------------------------------------------------------
# The paper's three g (eq. 4)
# --------------------------------------------------------------------------------------------

def dpo_g(x: torch.Tensor) -> torch.Tensor:
    """DPO: ``-log sigmoid(x)``; equals log 2 at x = 0 and decreases without bound below 0."""
    return -F.logsigmoid(x)


def ipo_g(x: torch.Tensor) -> torch.Tensor:
    """IPO in the paper's convention: ``(x - 1)^2``; optimum at x = beta * h = 1, i.e. h = 1/beta.

    The IPO paper (and TRL's ``loss_type="ipo"``) write ``(h - 1/(2*tau))^2``. With tau = beta,
    ``(beta*h - 1)^2 = beta^2 * (h - 1/beta)^2``, so ours is theirs with target 1/beta instead of
    1/(2*beta), times beta^2. TRL additionally divides each log-ratio by the completion length
    for ``ipo``. ``treemdp.losses.trl_ipo_equivalent_beta`` gives the conversion.
    """
    return (x - 1.0) ** 2


def slic_g(x: torch.Tensor) -> torch.Tensor:
    """SLiC: the hinge ``max(0, 1 - x)``; zero (saturated) once beta * h >= 1."""
    return torch.relu(1.0 - x)


_register_g("dpo", dpo_g, formula="-log sigmoid(beta*h)", family="paper",
            paper="Rafailov et al. 2023, DPO (eq. 7); Rafailov et al. 2024, eq. 4")
_register_g("ipo", ipo_g, formula="(beta*h - 1)^2  [TRL/IPO paper: (h - 1/(2 tau))^2, tau = beta/2]",
            family="paper", paper="Azar et al. 2023, IPO (eq. 17), in Rafailov et al. 2024's eq. 4 form")
_register_g("slic", slic_g, formula="max(0, 1 - beta*h)", family="paper",
            paper="Zhao et al. 2023, SLiC-HF; Rafailov et al. 2024, eq. 4")


# --------------------------------------------------------------------------------------------
# GPO: more convex (or not) g (Tang et al. 2024, "Generalized Preference Optimization", Table 1)
# --------------------------------------------------------------------------------------------

def exponential_g(x: torch.Tensor) -> torch.Tensor:
    """GPO exponential: ``exp(-x)``; 1 at x = 0, decreasing, never saturates (like DPO, steeper)."""
    return torch.exp(-x)


def truncated_quadratic_g(x: torch.Tensor) -> torch.Tensor:
    """GPO truncated quadratic: ``max(0, 1 - x)^2``; 1 at x = 0, zero with zero slope for x >= 1."""
    return torch.relu(1.0 - x) ** 2


def savage_g(x: torch.Tensor) -> torch.Tensor:
    """GPO Savage loss: ``1 / (1 + e^x)^2 = sigmoid(-x)^2``; 1/4 at x = 0, bounded in (0, 1).

    Not convex: for very negative x (a confidently wrong pair) it flattens towards 1 and its
    gradient vanishes, so such pairs stop counting (Masnadi-Shirazi & Vasconcelos 2008 built it to
    be robust to outliers).
    """
    return torch.sigmoid(-x) ** 2


_GPO = "Tang et al. 2024, Generalized Preference Optimization (Table 1)"
_register_g("exponential", exponential_g, formula="exp(-beta*h)", family="gpo", paper=_GPO)
_register_g("truncated_quadratic", truncated_quadratic_g, formula="max(0, 1 - beta*h)^2", family="gpo", paper=_GPO)
_register_g("savage", savage_g, formula="1 / (1 + exp(beta*h))^2", family="gpo", paper=_GPO)

LOSSES: dict[str, LossFn] = {name: o.g for name, o in OBJECTIVES.items() if o.family == "paper"}
"""The paper's three g (eq. 4) by name, derived from :data:`OBJECTIVES` (``dpo``, ``ipo``,
``slic``). Every other g-form objective has its ``g`` on its registry entry."""


# --------------------------------------------------------------------------------------------
# Variants that are not a g of beta*h alone
# --------------------------------------------------------------------------------------------

def conservative_logistic(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``-(1 - eps) log sigmoid(x) - eps log sigmoid(-x)``: logistic loss on a label flipped with
    probability eps; minimum at ``x = log((1 - eps)/eps)``."""
    return -(1.0 - epsilon) * F.logsigmoid(x) - epsilon * F.logsigmoid(-x)


@register_objective(
    name="cdpo", family="variant",
    formula="-(1-epsilon) log sigmoid(beta*h) - epsilon log sigmoid(-beta*h)",
    paper="Mitchell 2023, 'A note on DPO with noisy preferences & relationship to IPO' (cDPO)",
    params={"epsilon": Param(0.1, "probability that a preference label is flipped",
                             check_real(0.0, 0.5))})
def cdpo(batch: PreferenceBatch, beta: Beta, epsilon: float) -> torch.Tensor:
    """Conservative DPO: the expected DPO loss when each label is flipped with probability eps.

    Its optimum is finite, ``beta*h = log((1-eps)/eps)`` (where sigmoid(beta*h) = 1 - eps), so like
    IPO it stops pushing h once the pair is "explained". Not TRL's ``robust`` (Chowdhury et al.
    2024): ``robust = [-(1-eps) log sigmoid(x) + eps log sigmoid(-x)] / (1 - 2 eps)`` flips the sign
    of the second term and rescales, an unbiased estimate of the clean DPO loss whose gradient
    never vanishes (no finite optimum). TRL 1.16's ``sigmoid`` ignores ``label_smoothing``, so cDPO
    is not reachable through :func:`trl_loss`; ``aot``/``aot_unpaired`` use this same smoothing.
    """
    return conservative_logistic(beta * batch.h, epsilon)  # [..., B]


@register_objective(
    name="dpop", family="variant",
    formula="-log sigmoid(beta*[h - lam*max(0, log ref_w/pi_w)])",
    paper="Pal et al. 2024, 'Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive'",
    params={"lam": Param(50.0, "weight of the penalty on the chosen log-ratio falling below 0 (lambda)",
                         check_real(0.0))})
def dpop(batch: PreferenceBatch, beta: Beta, lam: float) -> torch.Tensor:
    """DPO-Positive (Smaug): DPO with a penalty, inside the sigmoid, whenever pi(y_w) < ref(y_w).

    With ``u_w = log pi_w/ref_w``, the margin becomes ``h - lam * max(0, -u_w)``; lam = 50 as in
    the paper. With pi(y_w) >= ref(y_w) it equals DPO.
    """
    penalty = torch.relu(-batch.chosen_logratio)  # max(0, log ref_w/pi_w), [..., B]
    return -F.logsigmoid(beta * (batch.h - lam * penalty))


@register_objective(
    name="chipo", family="variant",
    formula="-log sigmoid(clip_[-2 r_max, 2 r_max](beta*[phi(pi_w/ref_w) - phi(pi_l/ref_l)])), phi(z) = z + log z",
    paper="Huang et al. 2024, 'Correcting the Mythos of KL-Regularization: Direct Alignment without "
          "Overoptimization via Chi-Squared Preference Optimization' (Algorithm 1)",
    params={"r_max": Param(1.0, "reward bound R_max; the logit is clipped to [-2 r_max, 2 r_max] (inf: no clip)",
                           check_real(0.0, low_open=True, allow_inf=True))})
def chipo(batch: PreferenceBatch, beta: Beta, r_max: float) -> torch.Tensor:
    """chiPO: DPO with the link ``log z`` replaced by ``phi(z) = z + log z`` on z = pi/ref.

    Implemented as the paper's Algorithm 1: ``-log sigmoid(clip_{2 R_max}(beta*phi(z_w) -
    beta*phi(z_l)))`` with ``clip_R(x) = max(-R, min(R, x))``; ``r_max`` is R_max (default 1,
    rewards in [0, 1]; ``r_max=inf`` drops the clip). Where the clip is active the gradient is 0.
    The ``z`` term (chi^2 regularisation) grows exponentially in the log-ratio; log-ratios above
    ~88 (float32) / ~709 (float64) overflow. At pi = ref the value is log 2 and the gradient in
    u_w is -beta (twice DPO's, since phi'(1) = 2).
    """
    phi_w = torch.exp(batch.chosen_logratio) + batch.chosen_logratio  # phi(pi_w/ref_w), [..., B]
    phi_l = torch.exp(batch.rejected_logratio) + batch.rejected_logratio
    logit = (beta * (phi_w - phi_l)).clamp(-2.0 * r_max, 2.0 * r_max)
    return -F.logsigmoid(logit)


@register_objective(
    name="rpo", family="variant", needs_lengths=True,
    formula="-log sigmoid(beta*h) - alpha * log pi(y_w) / |y_w|",
    paper="Pang et al. 2024, 'Iterative Reasoning Preference Optimization' (eq. 1, DPO + NLL)",
    params={"alpha": Param(1.0, "weight of the chosen answer's per-token NLL", check_real(0.0))})
def rpo(batch: PreferenceBatch, beta: Beta, alpha: float) -> torch.Tensor:
    """RPO: DPO plus alpha times the chosen answer's NLL, normalised per example by its length.

    Pang et al. divide the chosen answer's NLL by its own length (per example); TRL writes RPO as
    ``trl_loss(["sigmoid", "sft"], loss_weights=[1, alpha])``, whose ``sft`` term is the token
    mean over the whole batch, ``-sum_b log pi(y_w,b) / sum_b |y_w,b|``. The two agree when every
    chosen answer has the same length (as in the toy tree, where the length is the depth).
    """
    nll = -batch.per_token(batch.policy_chosen, batch.chosen_lengths)  # per-token NLL of y_w, [..., B]
    return dpo_g(beta * batch.h) + alpha * nll


# --------------------------------------------------------------------------------------------
# TRL 1.16 DPOTrainer: every loss_type, f-divergence, label smoothing, weighted combinations
# --------------------------------------------------------------------------------------------
# In TRL (trl/trainer/dpo_trainer.py, DPOTrainer._compute_loss) a config picks f-divergence scores
# s = f'(pi/ref) of each answer's log-ratio (Wang et al. 2024, f-DPO), then sums
# w_k * mean_b(loss_k) over the listed loss types. Per example, that is sum_k w_k * loss_k.

def _reverse_kl(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """f'(t) = log t (+1, which cancels): the plain log-ratio, standard DPO."""
    return u


def _forward_kl(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """f'(t) = 1 - 1/t."""
    return 1.0 - torch.exp(-u)


def _js_divergence(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """f'(t) = log(2t/(1+t)) = log 2 + log sigmoid(log t)."""
    return math.log(2.0) + F.logsigmoid(u)


def _alpha_divergence(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """f'(t) = (t^(alpha-1) - 1)/(alpha - 1); log t itself when |alpha - 1| < 1e-6 (TRL's limit).

    As TRL, the exponent (alpha-1)*log t is clamped at 80 (11 in float16) so exp stays finite; TRL
    only supports float16/bfloat16/float32 here (its float64 path raises KeyError); we compute in
    at least float32 and return the input dtype.
    """
    if abs(alpha - 1.0) < 1e-6:
        return u
    exponent = (alpha - 1.0) * u
    wide = exponent.to(torch.promote_types(exponent.dtype, torch.float32))
    clamped = wide.clamp(max=11.0 if u.dtype == torch.float16 else 80.0)
    return (torch.exp(clamped) - 1.0).to(u.dtype) / (alpha - 1.0)


F_DIVERGENCES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "reverse_kl": _reverse_kl, "forward_kl": _forward_kl,
    "js_divergence": _js_divergence, "alpha_divergence": _alpha_divergence,
}


@dataclass(frozen=True)
class TrlScores:
    """What a TRL loss type reads: the batch, f-divergence scores and the smoothing settings."""

    batch: PreferenceBatch
    chosen: torch.Tensor  # s_w = f'(pi_w/ref_w), [..., B]
    rejected: torch.Tensor  # s_l = f'(pi_l/ref_l), [..., B]
    label_smoothing: float
    discopop_tau: float

    @property
    def delta(self) -> torch.Tensor:
        """s_w - s_l (equals h for reverse_kl), [..., B]."""
        return self.chosen - self.rejected

    @property
    def delta_per_token(self) -> torch.Tensor:
        """s_w/|y_w| - s_l/|y_l| (lengths clamped at 1), [..., B]."""
        b = self.batch
        return b.per_token(self.chosen, b.chosen_lengths) - b.per_token(self.rejected, b.rejected_lengths)


@dataclass(frozen=True)
class TrlLossType:
    """One TRL ``loss_type``: ``fn(scores, beta) -> [..., B]`` and what it needs."""

    name: str
    fn: Callable[[TrlScores, Beta], torch.Tensor]
    formula: str
    f_divergence: bool = True  # TRL accepts a non-default f_divergence_type with it
    batch_coupled: bool = False
    needs_lengths: bool = False


#: TRL 1.16 loss types by name (their formulas in TRL's symbols: s = f-divergence score,
#: u = log pi/ref, r = beta*u, eps = label_smoothing, |y| = completion tokens).
TRL_LOSS_TYPES: dict[str, TrlLossType] = {}


def _trl_loss_type(name: str, formula: str, **flags: bool):
    def add(fn):
        TRL_LOSS_TYPES[name] = TrlLossType(name, fn, formula, **flags)
        return fn
    return add


@_trl_loss_type("sigmoid", "-log sigmoid(beta*(s_w - s_l))  (= dpo for reverse_kl; ignores eps)")
def _trl_sigmoid(s: TrlScores, beta: Beta) -> torch.Tensor:
    return dpo_g(beta * s.delta)


@_trl_loss_type("hinge", "max(0, 1 - beta*(s_w - s_l))  (= slic for reverse_kl)")
def _trl_hinge(s: TrlScores, beta: Beta) -> torch.Tensor:
    return slic_g(beta * s.delta)


@_trl_loss_type("ipo", "(s_w/|y_w| - s_l/|y_l| - 1/(2 beta))^2  (Azar et al. eq. 17, per token)",
                needs_lengths=True)
def _trl_ipo(s: TrlScores, beta: Beta) -> torch.Tensor:
    return (s.delta_per_token - 1.0 / (2.0 * beta)) ** 2


def _bernoulli_kl(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(x)) || Bernoulli(1 - eps)) from logits, in log space."""
    return (torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-epsilon))
            + torch.sigmoid(-x) * (F.logsigmoid(-x) - math.log(epsilon)))


@_trl_loss_type("exo_pair", "KL(Bern(sigmoid(beta*(s_w - s_l))) || Bern(1 - eps)), eps > 0  (Ji et al. 2024, EXO eq. 16)")
def _trl_exo_pair(s: TrlScores, beta: Beta) -> torch.Tensor:
    return _bernoulli_kl(beta * s.delta, s.label_smoothing)


@_trl_loss_type("nca_pair", "-log sigmoid(r_w) - 1/2 log sigmoid(-r_w) - 1/2 log sigmoid(-r_l)  (Chen et al. 2024, NCA)",
                f_divergence=False)
def _trl_nca_pair(s: TrlScores, beta: Beta) -> torch.Tensor:
    r_w, r_l = beta * s.batch.chosen_logratio, beta * s.batch.rejected_logratio
    return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)


@_trl_loss_type("robust", "[-(1-eps) log sigmoid(x) + eps log sigmoid(-x)] / (1 - 2 eps), x = beta*(s_w - s_l), "
                          "eps in [0, 0.5)  (Chowdhury et al. 2024, rDPO)")
def _trl_robust(s: TrlScores, beta: Beta) -> torch.Tensor:
    x, eps = beta * s.delta, s.label_smoothing
    return (-(1.0 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1.0 - 2.0 * eps)


@_trl_loss_type("bco_pair", "-log sigmoid(r_w) - log sigmoid(-r_l)  (Jung et al. 2024, BCO; no running mean in TRL 1.16)",
                f_divergence=False)
def _trl_bco_pair(s: TrlScores, beta: Beta) -> torch.Tensor:
    return -F.logsigmoid(beta * s.batch.chosen_logratio) - F.logsigmoid(-beta * s.batch.rejected_logratio)


@_trl_loss_type("sppo_hard", "(u_w - 1/(2 beta))^2 + (u_l + 1/(2 beta))^2  (Wu et al. 2024, SPPO, hard labels)",
                f_divergence=False)
def _trl_sppo_hard(s: TrlScores, beta: Beta) -> torch.Tensor:
    target = 1.0 / (2.0 * beta)
    return (s.batch.chosen_logratio - target) ** 2 + (s.batch.rejected_logratio + target) ** 2


@_trl_loss_type("aot", "cDPO(beta*(sort_b(pi_w - pi_l) - sort_b(ref_w - ref_l)), eps)  (Melnyk et al. 2024, AOT)",
                f_divergence=False, batch_coupled=True)
def _trl_aot(s: TrlScores, beta: Beta) -> torch.Tensor:
    b = s.batch
    policy_sorted = torch.sort(b.policy_chosen - b.policy_rejected, dim=-1).values  # [..., B]
    ref_sorted = torch.sort(b.ref_chosen - b.ref_rejected, dim=-1).values
    return conservative_logistic(beta * (policy_sorted - ref_sorted), s.label_smoothing)


@_trl_loss_type("aot_unpaired", "cDPO(beta*(sort_b(u_w) - sort_b(u_l)), eps)  (Melnyk et al. 2024, AOT unpaired)",
                f_divergence=False, batch_coupled=True)
def _trl_aot_unpaired(s: TrlScores, beta: Beta) -> torch.Tensor:
    b = s.batch
    chosen_sorted = torch.sort(b.chosen_logratio, dim=-1).values  # [..., B]
    rejected_sorted = torch.sort(b.rejected_logratio, dim=-1).values
    return conservative_logistic(beta * (chosen_sorted - rejected_sorted), s.label_smoothing)


@_trl_loss_type("apo_zero", "(1 - sigmoid(r_w)) + sigmoid(r_l)  (D'Oosterlinck et al. 2024, APO eq. 7)",
                f_divergence=False)
def _trl_apo_zero(s: TrlScores, beta: Beta) -> torch.Tensor:
    return torch.sigmoid(-beta * s.batch.chosen_logratio) + torch.sigmoid(beta * s.batch.rejected_logratio)


@_trl_loss_type("apo_down", "sigmoid(r_w) + (1 - sigmoid(beta*(u_w - u_l)))  (D'Oosterlinck et al. 2024, APO eq. 8)",
                f_divergence=False)
def _trl_apo_down(s: TrlScores, beta: Beta) -> torch.Tensor:
    return torch.sigmoid(beta * s.batch.chosen_logratio) + torch.sigmoid(-beta * s.batch.h)


@_trl_loss_type("discopop", "(1 - m) (-log sigmoid(x)) + m exp(-x), m = sigmoid(x/tau), x = beta*(s_w - s_l)  "
                            "(Chan et al. 2024, DiscoPOP eq. 5)")
def _trl_discopop(s: TrlScores, beta: Beta) -> torch.Tensor:
    x = beta * s.delta
    mix = torch.sigmoid(x / s.discopop_tau)  # log-ratio modulated mixing weight, [..., B]
    return (1.0 - mix) * dpo_g(x) + mix * exponential_g(x)


@_trl_loss_type("sft", "-sum_b log pi(y_w,b) / sum_b |y_w,b|, the batch's token-mean NLL of the chosen answers",
                batch_coupled=True, needs_lengths=True)
def _trl_sft(s: TrlScores, beta: Beta) -> torch.Tensor:
    b = s.batch
    lengths = torch.broadcast_to(b.chosen_lengths, b.policy_chosen.shape).to(b.policy_chosen.dtype)
    mean_nll = -b.policy_chosen.sum(-1, keepdim=True) / lengths.sum(-1, keepdim=True)  # [..., 1]
    return mean_nll.expand(b.policy_chosen.shape)  # every example carries the batch's value


@_trl_loss_type("sigmoid_norm", "-log sigmoid(beta*(s_w/|y_w| - s_l/|y_l|))", needs_lengths=True)
def _trl_sigmoid_norm(s: TrlScores, beta: Beta) -> torch.Tensor:
    return dpo_g(beta * s.delta_per_token)


def _check_loss_types(value: Any) -> Union[str, tuple[str, ...]]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"must be a TRL loss type or a list of them, got {value!r}")
    unknown = [n for n in names if n not in TRL_LOSS_TYPES]
    if unknown:
        raise ValueError(f"has unknown TRL loss type {unknown[0]!r}; choose from: {', '.join(TRL_LOSS_TYPES)}")
    return names[0] if len(names) == 1 else tuple(names)


def _check_weights(value: Any) -> Optional[tuple[float, ...]]:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of numbers or none, got {value!r}")
    return tuple(check_real()(w) for w in value)


def _loss_types(loss_type: Union[str, tuple[str, ...]]) -> tuple[str, ...]:
    return (loss_type,) if isinstance(loss_type, str) else loss_type


def _trl_refine(values: Mapping[str, Any]) -> dict[str, bool]:
    """TRL's own checks on a DPOConfig (DPOConfig.__post_init__, DPOTrainer.__init__), and flags."""
    types = [TRL_LOSS_TYPES[name] for name in _loss_types(values["loss_type"])]
    weights, eps = values["loss_weights"], values["label_smoothing"]
    if weights is not None and len(weights) != len(types):
        raise ValueError(f"loss_weights has {len(weights)} weights for {len(types)} loss types")
    if values["f_divergence_type"] != "reverse_kl":
        unsupported = [t.name for t in types if not t.f_divergence]
        if unsupported:
            raise ValueError(f"f_divergence_type={values['f_divergence_type']} is not supported by "
                             f"{', '.join(unsupported)} (TRL allows it only with: "
                             f"{', '.join(t for t, v in TRL_LOSS_TYPES.items() if v.f_divergence)})")
    names = {t.name for t in types}
    if "exo_pair" in names and not 0.0 < eps < 1.0:
        raise ValueError(f"exo_pair needs 0 < label_smoothing < 1 (EXO recommends 1e-3), got {eps!r}")
    if "robust" in names and not 0.0 <= eps < 0.5:
        raise ValueError(f"robust needs 0 <= label_smoothing < 0.5, got {eps!r}")
    return {"batch_coupled": any(t.batch_coupled for t in types),
            "needs_lengths": any(t.needs_lengths for t in types)}


_TRL_DETAILS = "  loss types (s = f'(pi/ref) score, u = log pi/ref, r = beta*u, eps = label_smoothing):\n" + "\n".join(
    f"    {name}: {t.formula}" for name, t in TRL_LOSS_TYPES.items())


@register_objective(
    name="trl", family="trl", refine=_trl_refine, details=_TRL_DETAILS,
    formula="sum_k w_k * loss_k(s_w, s_l), s = f'(pi/ref); TRL 1.16 DPOTrainer loss_type(s)",
    paper="TRL 1.16 DPOTrainer (von Werra et al.); f-DPO: Wang et al. 2024; see each loss type",
    params={
        "loss_type": Param("sigmoid", "a TRL loss type or a list of them", _check_loss_types),
        "loss_weights": Param(None, "one weight per loss type (none: all 1)", _check_weights),
        "label_smoothing": Param(0.0, "eps of exo_pair, robust, aot, aot_unpaired", check_real(0.0, 1.0)),
        "f_divergence_type": Param("reverse_kl", "f-DPO divergence: " + ", ".join(F_DIVERGENCES),
                                   check_choice(*F_DIVERGENCES)),
        "f_alpha_divergence_coef": Param(0.5, "alpha of alpha_divergence", check_real()),
        "discopop_tau": Param(0.05, "temperature of discopop's mixing weight", check_real(0.0, low_open=True)),
    })
def trl(batch: PreferenceBatch, beta: Beta, loss_type, loss_weights, label_smoothing, f_divergence_type,
        f_alpha_divergence_coef, discopop_tau) -> torch.Tensor:
    """TRL 1.16 ``DPOTrainer``'s loss, per example: ``sum_k w_k * loss_k`` (TRL sums w_k * mean)."""
    types = _loss_types(loss_type)
    weights = loss_weights or (1.0,) * len(types)
    f_prime = F_DIVERGENCES[f_divergence_type]
    scores = TrlScores(batch, f_prime(batch.chosen_logratio, f_alpha_divergence_coef),
                       f_prime(batch.rejected_logratio, f_alpha_divergence_coef), label_smoothing, discopop_tau)
    return sum(w * TRL_LOSS_TYPES[name].fn(scores, beta) for name, w in zip(types, weights))


#: The DPOConfig fields :func:`trl_loss` takes, and the ones it refuses (they change the log-probs).
_TRL_REFUSED = {
    "beta": "pass beta to preference_loss (or the objective call), not to trl_loss",
    "ld_alpha": "ld_alpha (LD-DPO) changes how token log-probs are summed; apply it when computing "
                "the sequence log-probs",
    "use_weighting": "use_weighting (WPO) needs per-token probabilities, not only sequence log-probs",
}


def trl_loss(loss_type: Union[str, list[str]] = "sigmoid", **fields: Any) -> Objective:
    """The objective equal to TRL 1.16 ``DPOTrainer``'s loss for this ``DPOConfig``.

    Args:
        loss_type: a TRL loss type (:data:`TRL_LOSS_TYPES`) or a list of them.
        **fields: ``loss_weights``, ``label_smoothing``, ``f_divergence_type``,
            ``f_alpha_divergence_coef``, ``discopop_tau``, as in ``DPOConfig`` (its defaults for
            fields not given). ``ld_alpha=None`` and ``use_weighting=False`` are accepted (the
            defaults); other values raise, as they need more than sequence log-probs.

    Returns:
        An :class:`Objective` (spec ``trl(...)``): per example where TRL's loss is per example;
        for ``aot``, ``aot_unpaired`` and ``sft`` (batch-coupled in TRL) the batch mean equals
        TRL's. Call it with ``chosen_lengths``/``rejected_lengths`` (TRL: completion token counts,
        ``torch.long`` [B]) when a loss type normalises by length (``ipo``, ``sigmoid_norm``,
        ``sft``). ``bco_pair`` in TRL 1.16 has no running reward mean (older TRL had one); nothing
        here keeps state between calls.
    """
    for key, default in (("ld_alpha", None), ("use_weighting", False)):
        if key in fields and fields.pop(key) != default:
            raise ValueError(f"trl_loss: {_TRL_REFUSED[key]}")
    if "beta" in fields:
        raise ValueError(f"trl_loss: {_TRL_REFUSED['beta']}")
    unknown = sorted(set(fields) - set(OBJECTIVES["trl"].params))
    if unknown:
        valid = ", ".join(OBJECTIVES["trl"].params)
        raise ValueError(f"trl_loss: unknown DPOConfig field {unknown[0]!r}; it takes: {valid}")
    return OBJECTIVES["trl"].bind(loss_type=loss_type, **fields)


# --------------------------------------------------------------------------------------------
# The entry points both tracks call
# --------------------------------------------------------------------------------------------

def get_g(loss: Union[str, LossFn]) -> LossFn:
    """Return the ``g`` for one of the paper's loss names, or ``loss`` itself when it is a callable.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(LOSSES))
        raise ValueError(f"unknown loss {loss!r}; choose one of: {valid}") from None


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: Beta,
    loss: Union[str, Objective, LossFn] = "dpo",
    chosen_lengths: Optional[torch.Tensor] = None,
    rejected_lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-example direct alignment loss; ``g(beta * h)`` (paper eq. 4) for dpo/ipo/slic.

    Args:
        policy_chosen_logps: log pi(y_w | x), shape [..., B] (leading dims: stacked runs).
        policy_rejected_logps: log pi(y_l | x), shape [..., B].
        ref_chosen_logps: log ref(y_w | x), shape [..., B] (treated as constants by callers).
        ref_rejected_logps: log ref(y_l | x), shape [..., B].
        beta: inverse temperature: a float, finite and > 0, or a tensor broadcastable to
            [..., B] (e.g. [R, 1], checked by the caller).
        loss: anything :func:`get_objective` accepts: ``"dpo"``, ``"ipo"``, ``"slic"``, any
            registered name or spec (``"cdpo(epsilon=0.2)"``), ``"package.module:attr"``, an
            :class:`Objective` (e.g. from :func:`trl_loss`) or a callable ``g``.
        chosen_lengths: completion token counts of y_w, broadcastable to [..., B] (objectives that
            normalise by length need them).
        rejected_lengths: the same for y_l.

    Returns:
        Tensor [..., B] of per-example losses; with policy == reference (h = 0) they are
        log 2 (DPO), 1 (IPO) and 1 (SLiC).

    Mapping to TRL's ``DPOTrainer``: ``dpo`` == ``loss_type="sigmoid"`` and ``slic`` ==
    ``loss_type="hinge"`` at the same beta; ``ipo`` differs by a target and a scale (see
    :func:`ipo_g`); :func:`trl_loss` reproduces every TRL loss type exactly.
    """
    objective = get_objective(loss)
    batch = PreferenceBatch(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                            ref_rejected_logps, chosen_lengths, rejected_lengths)
    return objective(batch, beta)  # per-example losses, [..., B]


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, *, beta: float) -> torch.Tensor:
    """The DAA implicit reward r(y) = beta * log(pi(y) / ref(y)), elementwise."""
    return check_beta(beta) * (policy_logps - ref_logps)


def trl_ipo_equivalent_beta(beta: float) -> float:
    """The TRL ``ipo`` beta (tau) whose target 1/(2*tau) equals our optimum h = 1/beta: beta/2.

    With tau = beta/2, TRL's ``(h - 1/(2 tau))^2 = (h - 1/beta)^2 = ipo_g(beta*h) / beta^2``
    (ignoring TRL's per-token length normalisation, which callers must undo or match).
    """
    return check_beta(beta) / 2.0


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
    module, name = getattr(loss, "__module__", None), getattr(loss, "__qualname__", None)
    if module and name and "<" not in name and module != "__main__":
        try:
            if functools.reduce(getattr, name.split("."), importlib.import_module(module)) is loss:
                return f"{module}:{name}"
        except (ImportError, AttributeError):
            pass
    return f"<{name or type(loss).__name__}>"
