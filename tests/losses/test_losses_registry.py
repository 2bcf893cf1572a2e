"""The objective registry: spec strings, binding and checks, objectives from outside the package."""

import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from treemdp import preference_loss
from treemdp.losses import (OBJECTIVES, TRL_LOSS_TYPES, Objective, Param, PreferenceBatch, check_real, describe, format_value, get_objective,
                            objective_from_g, objectives_table, parse_spec, register_objective, trl_loss)


@pytest.fixture
def registry():
    """Let a test register objectives; the registry is restored afterwards."""
    saved = dict(OBJECTIVES)
    yield OBJECTIVES
    OBJECTIVES.clear()
    OBJECTIVES.update(saved)


def logps(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-4 * torch.rand(n, generator=g, dtype=torch.float64) for _ in range(4)]


@pytest.mark.parametrize("spec, expected", [
    ("dpo", ("dpo", {})),
    ("  cdpo( epsilon = 0.2 )  ", ("cdpo", {"epsilon": 0.2})),
    ("x(a=1, b=-2.5, c=1e-3, d=1E+2, e=true, f=False, g=none, h=inf, i=-inf)",
     ("x", {"a": 1, "b": -2.5, "c": 1e-3, "d": 100.0, "e": True, "f": False, "g": None, "h": math.inf,
            "i": -math.inf})),
    ("x(s=forward_kl, t='two words', u=\"it's\", v='1')", ("x", {"s": "forward_kl", "t": "two words", "u": "it's",
                                                               "v": "1"})),
    ("trl(loss_type=[sigmoid, sft], loss_weights=[1, 0.5], e=[], n=[[1, 2], [a]])",
     ("trl", {"loss_type": ["sigmoid", "sft"], "loss_weights": [1, 0.5], "e": [], "n": [[1, 2], ["a"]]})),
    ("my_pkg.sub.mod:thing.attr(k=3)", ("my_pkg.sub.mod:thing.attr", {"k": 3})),
    ("x()", ("x", {})),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


def test_nan_parses_as_a_float_and_is_rejected_by_the_check():
    name, params = parse_spec("cdpo(epsilon=nan)")
    assert math.isnan(params["epsilon"])
    with pytest.raises(ValueError, match=r"^cdpo: epsilon must be a finite number, got nan$"):
        get_objective("cdpo(epsilon=nan)")


@pytest.mark.parametrize("spec, message", [
    ("kto", r"^unknown loss 'kto'; choose one of: dpo, ipo, slic, .*trl \(or 'package.module:attr' or 'path/to/file.py:attr'\)$"),
    ("cdpo(eps=0.2)", r"^cdpo: unknown parameter 'eps'; valid: epsilon$"),
    ("dpo(beta=1)", r"^dpo: unknown parameter 'beta'; valid: none$"),
    ("cdpo(epsilon=0.7)", r"^cdpo: epsilon must be a number in \[0, 0.5\], got 0.7$"),
    ("cdpo(epsilon=high)", r"^cdpo: epsilon must be a number, got 'high'$"),
    ("cdpo(epsilon=true)", r"^cdpo: epsilon must be a number, got True$"),
    ("dpop(lam=-inf)", r"^dpop: lam must be a finite number, got -inf$"),
    ("chipo(r_max=0)", r"^chipo: r_max must be a number in \(0, inf\], got 0.0$"),
    ("trl(loss_type=kto)", r"^trl: loss_type has unknown TRL loss type 'kto'; choose from: sigmoid, .*$"),
    ("trl(loss_type=[sigmoid, sft], loss_weights=[1])", r"^trl: loss_weights has 1 weights for 2 loss types$"),
    ("trl(loss_type=exo_pair)", r"^trl: exo_pair needs 0 < label_smoothing < 1"),
    ("trl(loss_type=robust, label_smoothing=0.5)", r"^trl: robust needs 0 <= label_smoothing < 0.5"),
    ("trl(loss_type=aot, f_divergence_type=js_divergence)", r"^trl: f_divergence_type=js_divergence is not supported by aot"),
    ("trl(f_divergence_type=kl)", r"^trl: f_divergence_type must be one of reverse_kl, forward_kl"),
    ("cdpo(epsilon=0.1", r"^bad loss spec 'cdpo\(epsilon=0.1': missing '\)' at the end$"),
    ("trl(loss_type=[a, b)", r"^bad loss spec .*: expected ',' but found '\)'$"),
    ("trl(loss_type=[a, b", r"^bad loss spec .*: missing '\]' at the end$"),
    ("cdpo(epsilon=", r"^bad loss spec .*: unexpected end$"),
    ("cdpo(epsilon 0.1)", r"^bad loss spec .*: expected '=' but found '0.1'$"),
    ("cdpo(epsilon=0.1, epsilon=0.2)", r"^bad loss spec .*: parameter 'epsilon' given twice$"),
    ("dpo ipo", r"^bad loss spec 'dpo ipo': unexpected 'ipo' after the loss$"),
    ("(dpo)", r"^bad loss spec '\(dpo\)': expected a loss name$"),
    ("cdpo(epsilon='0.1)", r"^bad loss spec .*: cannot read"),
    ("", r"^bad loss spec '': unexpected end$"),
    ("no_such_module_xyz:g", r"^cannot load loss 'no_such_module_xyz:g': no module named 'no_such_module_xyz' "
                            r"\(nor a file no_such_module_xyz.py in the current folder .*\)$"),
    ("math:no_such", r"^cannot load loss 'math:no_such': module 'math' has no attribute 'no_such'$"),
    ("math:pi", r"^loss 'math:pi' is neither an Objective nor a callable g$"),
    ("math:exp(k=1)", r"^loss 'math:exp' is a plain function g\(x\); it takes no parameters$"),
    (3, r"^loss must be a name, a spec string, an Objective or a callable g; got 3$"),
])
def test_bad_specs_fail_with_one_line(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        get_objective(spec)
    assert "\n" not in str(info.value)


NON_DEFAULT = {"cdpo": dict(epsilon=0.25), "dpop": dict(lam=2), "chipo": dict(r_max=math.inf),
               "rpo": dict(alpha=1e-3),
               "trl": dict(loss_type=["sigmoid", "sft"], loss_weights=[1, 0.5], label_smoothing=0.1,
                           f_divergence_type="alpha_divergence", f_alpha_divergence_coef=-0.5, discopop_tau=0.2)}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_spec_round_trip(name):
    objective = OBJECTIVES[name].bind(**NON_DEFAULT.get(name, {}))
    assert get_objective(objective.spec) == objective
    assert hash(get_objective(objective.spec)) == hash(objective)
    assert OBJECTIVES[name].spec == name  # defaults are not listed
    assert get_objective(name) is OBJECTIVES[name]


def test_spec_lists_only_changed_values_in_declared_order():
    assert get_objective("trl(discopop_tau=0.05, label_smoothing=0.1, loss_type=[hinge])").spec == \
        "trl(loss_type=hinge, label_smoothing=0.1)"
    assert trl_loss("exo_pair", label_smoothing=0.001).spec == "trl(loss_type=exo_pair, label_smoothing=0.001)"
    assert get_objective("dpop(lam=50)").spec == "dpop"


@pytest.mark.parametrize("value", [1, -2.5, 1e-3, 1e300, math.inf, True, False, None, "forward_kl", "two words",
                                   "it's", "1", "true", "a=b", "", [1, "x y", [2.0, None]], ("a",)])
def test_format_value_round_trips(value):
    _, params = parse_spec(f"x(v={format_value(value)})")
    expected = list(value) if isinstance(value, tuple) else value
    assert params["v"] == expected and type(params["v"]) is type(expected)


def test_bind_checks_and_does_not_mutate():
    cdpo = OBJECTIVES["cdpo"]
    bound = cdpo.bind(epsilon=0.3)
    assert bound.values == {"epsilon": 0.3} and cdpo.values == {"epsilon": 0.1}
    assert bound.bind(epsilon=0.1) == cdpo
    assert cdpo.bind(epsilon=0).values["epsilon"] == 0.0 and isinstance(cdpo.bind(epsilon=0).values["epsilon"], float)
    with pytest.raises(ValueError, match="cdpo: unknown parameter 'alpha'"):
        cdpo.bind(alpha=1)
    assert cdpo.defaults == {"epsilon": 0.1} and "flipped" in cdpo.param_docs["epsilon"]


def test_user_objective_in_five_lines(registry):
    @register_objective
    def margin_dpo(batch, beta, gamma=0.5):
        """-log sigmoid(beta*h - gamma): DPO with a target margin gamma."""
        return -F.logsigmoid(beta * batch.h - gamma)

    pw, pl, rw, rl = logps()
    h = (pw - rw) - (pl - rl)
    out = preference_loss(pw, pl, rw, rl, beta=0.3, loss="margin_dpo(gamma=1)")
    torch.testing.assert_close(out, -F.logsigmoid(0.3 * h - 1))
    torch.testing.assert_close(preference_loss(pw, pl, rw, rl, beta=0.3, loss=margin_dpo),
                               -F.logsigmoid(0.3 * h - 0.5))
    row = next(r for r in objectives_table() if r["name"] == "margin_dpo")
    assert row["params"] == {"gamma": 0.5} and row["formula"].startswith("-log sigmoid(beta*h - gamma)")
    with pytest.raises(ValueError, match=r"^margin_dpo: gamma must be a finite number, got nan$"):
        get_objective("margin_dpo(gamma=nan)")
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_objective(margin_dpo)
    register_objective(margin_dpo.bind(gamma=2), replace=True)
    assert OBJECTIVES["margin_dpo"].values["gamma"] == 2.0


def test_registration_with_explicit_params_and_flags(registry):
    @register_objective(name="nll_only", formula="-log pi(y_w)/|y_w|", paper="none", needs_lengths=True,
                        params={"scale": Param(1.0, "multiplier", check_real(0.0, low_open=True))})
    def nll(batch, beta, scale):
        return -scale * batch.per_token(batch.policy_chosen, batch.chosen_lengths)

    assert OBJECTIVES["nll_only"] is nll and nll.needs_lengths and nll.param_docs == {"scale": "multiplier"}
    pw, pl, rw, rl = logps(3)
    lengths = torch.tensor([1, 2, 4])
    torch.testing.assert_close(preference_loss(pw, pl, rw, rl, beta=1.0, loss="nll_only(scale=2)",
                                               chosen_lengths=lengths, rejected_lengths=lengths), -2 * pw / lengths)
    with pytest.raises(ValueError, match=r"^nll_only: scale must be a number in \(0, inf\], got 0.0$"):
        nll.bind(scale=0)


def test_bad_registrations(registry):
    with pytest.raises(ValueError, match="need defaults: gamma"):
        register_objective(lambda batch, beta, gamma: batch.h, name="no_default")
    with pytest.raises(ValueError, match="takes \\(batch, beta, ...\\)"):
        register_objective(lambda x: x, name="one_arg")
    with pytest.raises(ValueError, match="letters, digits and _"):
        register_objective(lambda batch, beta: batch.h, name="has-dash")
    with pytest.raises(ValueError, match="has no parameter 'delta'"):
        register_objective(lambda batch, beta, gamma=1.0: batch.h, name="typo", params={"delta": 1.0})


def test_module_attr_loading(tmp_path, monkeypatch, registry):
    (tmp_path / "my_zoo.py").write_text(textwrap.dedent('''
        import torch
        from treemdp.losses import Objective, Param, register_objective

        def exp_g(x):
            return torch.exp(-x)

        def _scaled(batch, beta, k):
            return k * batch.h ** 2

        squared = Objective(name="my_zoo:squared", fn=_scaled, params={"k": Param(1.0, "scale")})

        @register_objective(name="my_zoo_margin")
        def margin(batch, beta, gamma=0.5):
            return -torch.nn.functional.logsigmoid(beta * batch.h - gamma)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    pw, pl, rw, rl = logps()
    h = (pw - rw) - (pl - rl)
    g_form = get_objective("my_zoo:exp_g")
    assert g_form.name == "my_zoo:exp_g" and g_form.spec == "my_zoo:exp_g"
    torch.testing.assert_close(preference_loss(pw, pl, rw, rl, beta=0.5, loss="my_zoo:exp_g"), torch.exp(-0.5 * h))
    torch.testing.assert_close(preference_loss(pw, pl, rw, rl, beta=0.5, loss="my_zoo:squared(k=3)"), 3 * h ** 2)
    squared = get_objective("my_zoo:squared(k=3)")
    assert squared.spec == "my_zoo:squared(k=3.0)" and get_objective(squared.spec) == squared
    # an objective registered by a module treemdp does not import keeps the path as its name
    margin = get_objective("my_zoo:margin(gamma=2)")
    assert margin.spec == "my_zoo:margin(gamma=2.0)" and "my_zoo_margin" in OBJECTIVES
    torch.testing.assert_close(margin(PreferenceBatch(pw, pl, rw, rl), 0.5), -F.logsigmoid(0.5 * h - 2))
    # a plain importable callable passed directly gets a spec that loads it again
    module = sys.modules["my_zoo"]
    assert get_objective(module.exp_g).spec == "my_zoo:exp_g" == get_objective("my_zoo:exp_g").spec
    assert get_objective(module.exp_g) == get_objective("my_zoo:exp_g")


def test_callable_g_is_eq4():
    pw, pl, rw, rl = logps()
    h = (pw - rw) - (pl - rl)
    lam = lambda x: torch.exp(-x)  # noqa: E731  (Tang et al.'s exponential loss)
    torch.testing.assert_close(preference_loss(pw, pl, rw, rl, beta=0.5, loss=lam), torch.exp(-0.5 * h))
    assert objective_from_g(lam).name == "<lambda>" and objective_from_g(torch.exp).g is torch.exp
    torch.testing.assert_close(preference_loss(pw, pl, rw, rl, beta=0.5, loss=lam),
                               preference_loss(pw, pl, rw, rl, beta=0.5, loss="exponential"))

    def unregistered(batch, beta):  # an objective function passed where a g is expected
        return batch.h
    with pytest.raises(ValueError, match=r"takes 2 arguments but a plain g takes one .*register_objective"):
        preference_loss(pw, pl, rw, rl, beta=0.5, loss=unregistered)


def test_trl_loss_fields():
    assert trl_loss("ipo", ld_alpha=None, use_weighting=False) == get_objective("trl(loss_type=ipo)")
    for fields, message in [(dict(beta=0.1), "pass beta to preference_loss"),
                            (dict(ld_alpha=0.5), "ld_alpha .LD-DPO."), (dict(use_weighting=True), "use_weighting .WPO."),
                            (dict(rpo_alpha=1.0), "unknown DPOConfig field 'rpo_alpha'; it takes: loss_type, ")]:
        with pytest.raises(ValueError, match=f"^trl_loss: {message}"):
            trl_loss("sigmoid", **fields)


def test_table_and_describe():
    rows = objectives_table()
    assert [r["name"] for r in rows] == list(OBJECTIVES)
    for row in rows:
        assert set(row) >= {"name", "formula", "params", "param_docs", "paper"} and row["formula"]
        assert set(row["params"]) == set(row["param_docs"])
        assert row["paper"], row["name"]
        assert all(row["param_docs"].values()), row["name"]
    text = describe("dpop(lam=3)")
    assert text.splitlines()[0] == "dpop(lam=3.0)  [variant]" and "lam = 3.0  (default 50.0)" in text
    assert "Pal et al. 2024" in text
    trl_text = describe("trl")
    for loss_type in TRL_LOSS_TYPES:
        assert f"    {loss_type}: " in trl_text
    assert "batch-coupled" in describe("trl(loss_type=aot)")


def test_objective_repr_and_equality():
    assert repr(get_objective("cdpo(epsilon=0.2)")) == "Objective('cdpo(epsilon=0.2)')"
    assert get_objective("cdpo(epsilon=0.2)") != OBJECTIVES["cdpo"]
    assert len({get_objective("cdpo(epsilon=0.2)"), OBJECTIVES["cdpo"].bind(epsilon=0.2)}) == 1
    assert isinstance(OBJECTIVES["dpo"], Objective)


def test_the_docs_page_lists_every_objective_and_loss_type():
    page = (Path(__file__).resolve().parents[2] / "docs" / "objectives.md").read_text()
    for name in list(OBJECTIVES) + list(TRL_LOSS_TYPES):
        assert f"| `{name}` |" in page, name


def test_a_spec_follows_the_registry(registry):
    """Specs are cached for speed; re-registering a name (or removing it) is still seen."""
    register_objective(lambda batch, beta, k=1.0: k * batch.h, name="linear")
    pw, pl, rw, rl = logps()
    first = preference_loss(pw, pl, rw, rl, beta=1.0, loss="linear(k=2)")
    assert get_objective("linear(k=2)") is get_objective("linear(k=2)")
    register_objective(lambda batch, beta, k=1.0: -k * batch.h, name="linear", replace=True)
    torch.testing.assert_close(preference_loss(pw, pl, rw, rl, beta=1.0, loss="linear(k=2)"), -first)
    del OBJECTIVES["linear"]
    with pytest.raises(ValueError, match="unknown loss 'linear'"):
        get_objective("linear(k=2)")
