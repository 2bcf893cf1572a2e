"""Tabular DPO on the paper's tree, from scratch: the whole method in one page.

A tabular policy (independent logits per state) is behaviour-cloned on the three demonstrations,
frozen as the reference, then trained with DPO on the one preference. Every trajectory's
probability is enumerated exactly at every step, so nothing is sampled. This is what
``treemdp.train(policy="tabular")`` does (the test holds the two equal, bit for bit), without
the engine that stacks many runs into one computation.

    python examples/tabular_dpo.py
"""

import torch

from treemdp import TabularPolicy, TreeMDP, paper_dataset, preference_loss, trajectory_log_probs


def tabular_dpo(beta=0.1, seed=0, sft_steps=200, daa_steps=1000, lr=1e-2) -> torch.Tensor:
    """Trajectory probabilities [27] after SFT then DPO, in ``TreeMDP().trajectories()`` order."""
    mdp, data = TreeMDP(branching=3, depth=3), paper_dataset()
    demos = mdp.trajectory_index(data.demonstrations)  # rows of mdp.trajectories()
    chosen, rejected = mdp.trajectory_index(data.chosen()), mdp.trajectory_index(data.rejected())
    policy = TabularPolicy(mdp, seed=seed)

    # SFT: minimise the exact negative log-likelihood of the demonstrations.
    optimiser = torch.optim.Adam(policy.parameters(), lr=lr, fused=True)  # the engine's Adam kernel
    for _ in range(sft_steps):
        loss = -trajectory_log_probs(policy)[demos].mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    # The SFT policy, frozen, is the reference of the alignment phase.
    with torch.no_grad():
        ref = trajectory_log_probs(policy)  # [27] log ref(y)

    # DPO, paper eq. 4: h = log pi/ref (y_w) - log pi/ref (y_l), loss = -log sigmoid(beta * h).
    optimiser = torch.optim.Adam(policy.parameters(), lr=lr, fused=True)
    for _ in range(daa_steps):
        logp = trajectory_log_probs(policy)  # [27] log pi(y), differentiable
        losses = preference_loss(logp[chosen], logp[rejected], ref[chosen], ref[rejected], beta=beta, loss="dpo")
        optimiser.zero_grad()
        losses.mean().backward()
        optimiser.step()
    with torch.no_grad():
        return trajectory_log_probs(policy).exp()


if __name__ == "__main__":
    probs = tabular_dpo()
    mdp, data = TreeMDP(), paper_dataset()
    seen = torch.zeros(mdp.n_trajectories, dtype=torch.bool)
    seen[mdp.trajectory_index(data.demonstrations)] = True
    print(f"mass on the 3 demonstrated trajectories: {probs[seen].sum():.3f}")
    print(f"mass on the 24 never shown (OOD):        {probs[~seen].sum():.3f}")
    for row in torch.argsort(probs, descending=True)[:5].tolist():
        print(f"  {mdp.trajectory_name(mdp.trajectories()[row])}  {probs[row]:.3f}  {'seen' if seen[row] else 'OOD'}")
