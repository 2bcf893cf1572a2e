"""The live-plot machinery the lessons share: grids trained once, artists updated in place."""

import ipywidgets as widgets
import matplotlib
import matplotlib.figure
import numpy as np
import pytest

from treemdp.plots import TrajectoryView, live_plot, plot_trajectories, probability_matrix, run_grid, trajectory_roles
from treemdp.training import TrainConfig, train

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def run():
    return train(sft_steps=40, daa_steps=30, progress=False)


@pytest.mark.parametrize("log_every", [1, 7])
def test_probability_matrix_equals_a_pivot_of_the_history(log_every):
    history = train(sft_steps=20, daa_steps=30, log_every=log_every, progress=False).history
    steps, probs, names = probability_matrix(history)
    table = history[history["phase"] == "daa"].pivot(index="step", columns="trajectory", values="prob")
    np.testing.assert_array_equal(steps, table.index.to_numpy())
    np.testing.assert_allclose(probs, table[names].to_numpy())
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_roles_name_chosen_rejected_data_and_ood(run):
    roles = trajectory_roles(run.history)
    assert roles["s1-a1-s3-a1-s9-a0-s∞"] == "chosen" and roles["s1-a0-s2-a0-s5-a0-s∞"] == "rejected"
    assert roles["s1-a2-s4-a2-s13-a2-s∞"] == "data"
    assert sum(r == "OOD" for r in roles.values()) == 24
    fig = matplotlib.figure.Figure()
    ax = fig.subplots()
    plot_trajectories(run.history, ax, phase="daa")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(l.endswith("(chosen)") for l in labels) and any(l.endswith("(rejected)") for l in labels)
    assert sum(l.endswith("(data)") for l in labels) == 1


def test_run_grid_matches_single_runs_and_keeps_the_order():
    configs = [TrainConfig(sft_steps=20, daa_steps=10, loss="ipo", beta=0.5),
               TrainConfig(sft_steps=20, daa_steps=10, policy="tabular", sft_lr=0.3),
               TrainConfig(sft_steps=20, daa_steps=10, seed=1)]
    for config, result in zip(configs, run_grid(configs)):
        alone = train(config, progress=False)
        assert result.config == config
        assert result.summary["final_ood_mass"] == pytest.approx(alone.summary["final_ood_mass"], abs=1e-5)


def test_live_plot_updates_the_artists_in_place_on_every_control_change(run):
    slider = widgets.IntSlider(value=10, min=5, max=30, step=5)
    calls = []

    def setup(fig):
        top, bottom = fig.subplots(2, 1)
        return TrajectoryView(top, bottom, history=run.history)

    def update(view):
        steps, probs, _ = probability_matrix(run.history)
        keep = steps <= slider.value
        calls.append(slider.value)
        view.show(steps[keep], probs[keep], title=f"up to {slider.value}")

    box = live_plot(update, [slider], setup=setup)
    lines = list(box.figure.axes[0].lines)
    slider.value = 25
    assert calls[-1] == 25 and box.figure.axes[0].get_title() == "up to 25"
    assert list(box.figure.axes[0].lines) == lines  # the same artists, new data
    assert len(lines[0].get_xdata()) == 26 and box.seconds >= 0
