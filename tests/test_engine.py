"""The one engine: objectives, policies and measurements from outside the package, in train,
sweep and the CLI; RNNPolicy against PyTorch's own cells; old run folders still load."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import treemdp
from treemdp import TreeMDP, trajectory_log_probs
from treemdp.engine import MEASUREMENTS, register_measurement
from treemdp.losses import OBJECTIVES, register_objective
from treemdp.policies import POLICIES, RNNPolicy, TreePolicy, TransformerPolicy, register_policy
from treemdp.training import TrainConfig, train, train_batch

SHORT = dict(sft_steps=30, daa_steps=30, log_every=10, progress=False)


def test_a_callable_g_trains_like_the_registered_name():
    """train(loss=g) with g = -logsigmoid is DPO, and config.json names it importably."""
    result = train(loss=lambda x: -F.logsigmoid(x), **SHORT)
    dpo = train(loss="dpo", **SHORT)
    np.testing.assert_allclose(result.metrics["loss"], dpo.metrics["loss"], rtol=1e-6)
    assert result.config.to_dict()["loss"].startswith("<")  # a lambda cannot be imported back


@pytest.mark.slow  # a subprocess per CLI call
def test_a_user_objective_in_five_lines_reaches_train_and_sweep(tmp_path):
    @register_objective(name="dpo_nll", formula="-log sigmoid(beta h) + alpha * NLL(y_w)", params={"alpha": 0.5})
    def dpo_nll(batch, beta, alpha):
        return -F.logsigmoid(beta * batch.h) - alpha * batch.policy_chosen

    try:
        result = train(loss="dpo_nll(alpha=2.0)", **SHORT)
        assert result.config.loss == "dpo_nll(alpha=2.0)" and result.summary["loss"] == "dpo_nll(alpha=2.0)"
        first = result.metrics[result.metrics.phase == "daa"].iloc[0]
        assert first["loss"] == pytest.approx(np.log(2) - 2.0 * np.log(first["chosen_prob"]), rel=1e-5)
        from treemdp.sweep import grid, sweep
        table = sweep(grid(TrainConfig(sft_steps=10, daa_steps=10), loss=["dpo", "dpo_nll"], seed=[0]),
                      tmp_path / "g", light=True, progress=False)
        assert list(table["loss"]) == ["dpo", "dpo_nll"]
    finally:
        OBJECTIVES.pop("dpo_nll")


def cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "treemdp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


@pytest.mark.slow  # a subprocess per CLI call
def test_cli_objective_parameters_as_flags_specs_and_module_function(tmp_path):
    proc = cli("train", "--loss", "cdpo", "--epsilon", "0.2", "--sft-steps", 5, "--daa-steps", 5, "--quiet",
               "--no-plot", "--out", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["loss"] == "cdpo(epsilon=0.2)"
    # config.json reruns it exactly
    proc = cli("train", "--config", tmp_path / "a" / "config.json", "--quiet", "--no-plot", "--out", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()
    # a user's module:function
    (tmp_path / "my_losses.py").write_text(textwrap.dedent("""
        import torch
        def softplus_g(x):
            return torch.nn.functional.softplus(-x)
    """))
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    proc = cli("train", "--loss", "my_losses:softplus_g", "--sft-steps", 5, "--daa-steps", 5, "--quiet", "--no-plot",
               "--out", tmp_path / "c", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "c" / "config.json").read_text())["loss"] == "my_losses:softplus_g"
    # a sweep multiplies the grid for the objectives that take the parameter
    proc = cli("sweep", "--loss", "dpo", "cdpo", "--epsilon", "0.1", "0.3", "--sft-steps", 5, "--daa-steps", 5,
               "--light", "--quiet", "--workers", 1, "--out", tmp_path / "g")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(json.dumps(list(__import__("pandas").read_csv(tmp_path / "g" / "results.csv")["loss"])))
    assert results == ["dpo", "cdpo", "cdpo(epsilon=0.3)"]  # 0.1 is the default: the canonical spec omits it
    # errors: one line each
    for args, message in ((["--loss", "dpo", "--epsilon", "0.1"], "unrecognized argument --epsilon"),
                          (["--loss", "cdpo", "--epsilon", "0.9"], "epsilon"),
                          (["--loss", "no_such_module:g"], "no_such_module")):
        proc = cli("train", *args, "--quiet", "--out", tmp_path / "x")
        assert proc.returncode == 2 and proc.stderr.startswith("error:") and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # a subprocess per CLI call
def test_losses_command_lists_every_objective():
    proc = cli("losses")
    assert proc.returncode == 0
    for name in OBJECTIVES:
        assert any(line.startswith(name + " ") for line in proc.stdout.splitlines()), name
    proc = cli("losses", "cdpo")
    assert proc.returncode == 0 and "epsilon" in proc.stdout
    proc = cli("losses", "nonsense")
    assert proc.returncode == 2 and proc.stderr.startswith("error:")


class BigramPolicy(TreePolicy):
    """A policy from outside the package: logits depend on the last action only (5 lines of math)."""

    def __init__(self, mdp, seed=0):
        super().__init__()
        self.mdp = mdp
        self.table = torch.nn.Parameter(torch.randn(mdp.branching + 1, mdp.branching, generator=torch.Generator().manual_seed(seed)))

    def stacked_log_probs(self, params, **_):
        traj = self.mdp.trajectories()
        previous = torch.cat([torch.full((len(traj), 1), self.mdp.branching), traj[:, :-1]], 1)  # BOS first
        step = torch.log_softmax(params["table"][:, previous], -1)  # [R, T, depth, b]
        return step.gather(-1, traj.expand(step.shape[0], *traj.shape)[..., None])[..., 0].sum(-1)


def test_a_new_policy_needs_its_parameters_its_log_probs_and_one_registry_entry(tmp_path):
    register_policy("bigram", lambda mdp, *, seed=0, **_: BigramPolicy(mdp, seed))
    try:
        mdp = TreeMDP()
        policy = BigramPolicy(mdp, 3)
        logp = trajectory_log_probs(policy)
        assert abs(logp.exp().sum().item() - 1) < 1e-6
        # action_log_probs from the enumeration's marginals equals the bigram table's softmax
        torch.testing.assert_close(policy.action_log_probs(torch.tensor([[1, 2]])),
                                   torch.log_softmax(policy.table[2:3], -1))
        result = train(policy="bigram", **SHORT)
        daa = result.metrics[result.metrics.phase == "daa"]
        assert result.summary["policy"] == "bigram"
        ratio = daa["chosen_prob"] / daa["rejected_prob"]
        assert ratio.iloc[-1] > 2 * ratio.iloc[0]  # DPO moved this policy too
        (batched,) = [r for r in train_batch([TrainConfig(policy="bigram", seed=s, sft_steps=10, daa_steps=10)
                                              for s in range(3)])][:1]
        assert batched.config.seed == 0
    finally:
        POLICIES.pop("bigram")


def test_transformer_policy_enumeration_equals_monte_carlo_and_trains():
    import gymnasium
    from treemdp.env import rollout
    mdp = TreeMDP(2, 3)
    policy = TransformerPolicy(mdp, hidden_size=8, seed=1)
    with torch.no_grad():
        p = trajectory_log_probs(policy).exp().double().numpy()
        for t in range(mdp.depth):  # the per-step questions answered from the enumeration, by the chain rule
            prefixes = mdp.trajectories()[:, :t]
            step = policy.action_log_probs(prefixes).gather(1, mdp.trajectories()[:, t:t + 1]).squeeze(1)
            assert torch.isfinite(step).all()
    samples = rollout(gymnasium.make(treemdp.ENV_ID, branching=2, depth=3), policy, seed=0, episodes=20_000)
    freq = np.bincount(mdp.trajectory_index(torch.as_tensor(samples)).numpy(), minlength=8) / 20_000
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / 20_000) + 1e-4)
    result = train(policy="transformer", hidden_size=8, sft_steps=60, daa_steps=20, log_every=20, sft_lr=3e-2,
                   progress=False)
    assert result.summary["sft_ood_mass"] < 0.2


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_rnn_policy_is_pytorchs_cell_and_loads_old_state_dicts(cell):
    """Step products through torch.nn's own cells, built from the policy's weights, equal the
    enumeration; the old nn-module state-dict layout loads into the same policy."""
    mdp = TreeMDP(3, 3)
    policy = RNNPolicy(mdp, hidden_size=8, cell=cell, seed=4)
    embed = torch.nn.Embedding(4, 8)
    nn_cell = {"gru": torch.nn.GRUCell, "lstm": torch.nn.LSTMCell, "rnn": torch.nn.RNNCell}[cell](8, 8)
    head = torch.nn.Linear(8, 3)
    old = {"embed.weight": torch.cat([policy.embed, policy.bos]), "cell.weight_ih": policy.weight_ih.T,
           "cell.weight_hh": policy.weight_hh.T, "cell.bias_ih": policy.bias_ih[0], "cell.bias_hh": policy.bias_hh[0],
           "head.weight": policy.head_weight.T, "head.bias": policy.head_bias[0]}
    with torch.no_grad():
        embed.weight.copy_(old["embed.weight"])
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(nn_cell, name).copy_(old[f"cell.{name}"])
        head.weight.copy_(old["head.weight"])
        head.bias.copy_(old["head.bias"])
        traj = mdp.trajectories()
        state = nn_cell(embed(torch.full((27,), 3)))
        total = torch.zeros(27)
        for t in range(3):
            h = state[0] if cell == "lstm" else state
            total += torch.log_softmax(head(h), -1).gather(1, traj[:, t:t + 1]).squeeze(1)
            state = nn_cell(embed(traj[:, t]), state)
        torch.testing.assert_close(trajectory_log_probs(policy), total, atol=1e-5, rtol=1e-5)
        fresh = RNNPolicy(mdp, hidden_size=8, cell=cell, seed=99)
        fresh.load_state_dict({k: v.clone() for k, v in old.items()})
        torch.testing.assert_close(trajectory_log_probs(fresh), trajectory_log_probs(policy))


def test_a_measurement_from_outside_is_a_metrics_column():
    @register_measurement("mass_first_a0", "probability of the trajectories starting with a0")
    def mass_first_a0(logp, ctx):
        return logp[..., : ctx.mdp.n_trajectories // ctx.mdp.branching].exp().sum(-1)

    try:
        result = train(**SHORT)
        by_hand = result.history.groupby(["phase", "step"], sort=False).apply(
            lambda g: g.loc[g.trajectory.str.startswith("s1-a0"), "prob"].sum(), include_groups=False)
        np.testing.assert_allclose(result.metrics["mass_first_a0"], by_hand.to_numpy(), atol=1e-6)
    finally:
        MEASUREMENTS.pop("mass_first_a0")
