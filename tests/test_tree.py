"""The tree: numbering, transitions, trajectories, names, the paper's data, data validation."""

import json

import pytest
import torch

from treemdp import TreeMDP, UserError, load_dataset, make_dataset, paper_dataset


def test_paper_tree_numbering_matches_appendix_e():
    mdp = TreeMDP()
    assert (mdp.n_states, mdp.terminal, mdp.n_trajectories) == (13, 13, 27)
    # s1 -> s2 s3 s4; s3 (index 2) -> s8 s9 s10; depth-2 nodes -> s∞
    assert mdp.next_state[0].tolist() == [1, 2, 3]
    assert mdp.next_state[2].tolist() == [7, 8, 9]
    assert (mdp.next_state[4:] == mdp.terminal).all()
    assert [mdp.state_name(s) for s in (0, 8, 12, 13)] == ["s1", "s9", "s13", "s∞"]


def test_trajectories_lexicographic_and_named_as_in_the_paper():
    mdp = TreeMDP()
    traj = mdp.trajectories()
    assert traj.shape == (27, 3) and traj.dtype == torch.long
    assert traj[0].tolist() == [0, 0, 0] and traj[12].tolist() == [1, 1, 0] and traj[26].tolist() == [2, 2, 2]
    assert mdp.trajectory_name([1, 1, 0]) == "s1-a1-s3-a1-s9-a0-s∞"
    assert mdp.trajectory_name([2, 2, 2]) == "s1-a2-s4-a2-s13-a2-s∞"
    assert len(set(mdp.trajectory_names())) == 27
    assert mdp.trajectory_index(traj).tolist() == list(range(27))


@pytest.mark.parametrize("branching,depth", [(2, 1), (2, 4), (3, 3), (4, 2), (5, 3)])
def test_table_walk_reaches_every_leaf_once(branching, depth):
    mdp = TreeMDP(branching, depth)
    traj = mdp.trajectories()
    assert len({tuple(r) for r in traj.tolist()}) == branching**depth
    # walking the transition table along each trajectory ends in the terminal state after `depth`
    # steps and the last non-terminal states are all distinct leaves
    last = mdp.prefix_states(traj[:, :-1])
    assert (mdp.node_depth[last.numpy()] == depth - 1).all()
    assert torch.equal(mdp.prefix_states(traj[:, :0]), torch.zeros(len(traj), dtype=torch.long))
    for row in traj[:: max(1, len(traj) // 7)].tolist():
        s = 0
        for a in row:
            s = mdp.step_state(s, a)
        assert s == mdp.terminal
    assert mdp.trajectories_row(len(traj) - 1) == traj[-1].tolist()


@pytest.mark.parametrize("branching,depth", [(1, 3), (0, 2), (3, 0), (2.5, 2), (True, 3)])
def test_impossible_shapes_rejected(branching, depth):
    with pytest.raises(UserError):
        TreeMDP(branching, depth)


def test_paper_dataset():
    data = paper_dataset()
    assert data.demonstrations.tolist() == [[0, 0, 0], [1, 1, 0], [2, 2, 2]]
    assert [(p.chosen, p.rejected) for p in data.preferences] == [((1, 1, 0), (0, 0, 0))]


@pytest.mark.parametrize("demos,prefs,message", [
    ([], [], "non-empty"),
    ([[0, 0]], [], "length 2"),
    ([[0, 0, 3]], [], "action 3"),
    ([[0, 0, -1]], [], "action -1"),
    ([[0, 0, "a"]], [], "action 'a'"),
    ([[0, 0, 0]], [{"chosen": [1, 1, 0], "rejected": [1, 1, 0]}], "chosen equals rejected"),
    ([[0, 0, 0]], [{"chosen": [1, 1, 0]}], "exactly the keys"),
    ([[0, 0, 0]], [{"chosen": [1, 1], "rejected": [0, 0, 0]}], "preference 0 chosen"),
])
def test_bad_data_named(demos, prefs, message):
    with pytest.raises(UserError, match=message):
        make_dataset(TreeMDP(), demos, prefs)


def test_load_dataset(tmp_path):
    mdp = TreeMDP()
    good = tmp_path / "d.json"
    good.write_text(json.dumps(paper_dataset().to_json()))
    loaded = load_dataset(good, mdp)
    assert torch.equal(loaded.demonstrations, paper_dataset().demonstrations)
    assert loaded.preferences == paper_dataset().preferences
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_dataset(bad, mdp)
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(tmp_path / "missing.json", mdp)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"demos": []}))
    with pytest.raises(UserError, match="unknown keys"):
        load_dataset(wrong, mdp)
