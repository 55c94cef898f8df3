"""The claims of agents.losses (eq. 20-27) about the policy gradient, measured on problems small enough to enumerate.

- REINFORCE (eq. 21) is an unbiased estimate of ∇J (eq. 20), with no baseline, a constant
  baseline and a leave-one-out group baseline (eq. 22-25); a group mean that includes the sample's
  own reward is not (its expectation is (G-1)/G · ∇J).
- With large positive rewards (the chapter's "every response scores between 9 and 11"), a baseline
  cuts the variance of the estimate.
- For a two-token episode the per-token sum of eq. 20 is the exact gradient, with or without a
  state-only baseline; a "baseline" that peeks at a later action is biased.
- The importance-weighted estimate of eq. 27, with samples from θ_old, is the on-policy gradient at
  θ (exact for one-step episodes, where the per-token ratio is the whole trajectory's ratio).

Every estimate is built from agents.losses (token_log_probs → policy_gradient_loss →
aggregate_loss → backward); the agent's own path (agents.baselines → reinforce_loss) is checked the
same way. Many independent estimates are computed in one batched backward pass:
each estimate gets its own copy of the parameters (a row of a leaf tensor), so the gradient of a
row is exactly that estimate. Expectations are checked twice: exactly, by enumerating every
outcome with its probability, and by Monte Carlo with a tolerance of 5 measured standard errors.
"""

import itertools

import pytest
import torch

from agents.baselines import BASELINES, BaselineInputs
from agents.losses import (
    aggregate_loss,
    clipped_policy_gradient_loss,
    discounted_returns,
    group_normalized_rewards,
    policy_gradient_loss,
    reinforce_loss,
    token_log_probs,
)


DT = torch.float64
K = 4
THETA = torch.tensor([0.4, -0.3, 0.1, 0.6], dtype=DT)
REWARDS = torch.tensor([10.0, 10.5, 11.0, 9.0], dtype=DT)  # all large and positive
CONSTANT_BASELINE = 10.0
GROUP = 4                       # rollouts per estimate (the group for the group baselines)
N_ESTIMATES = 50_000
N_SE = 5.0


# ---------------------------------------------------------------------------------- helpers


def exact_bandit_gradient(theta: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    theta = theta.clone().requires_grad_()
    (torch.softmax(theta, -1) * rewards).sum().backward()  # ∇_θ Σ_a π_θ(a) r(a)   (eq. 16)
    return theta.grad


def bandit_estimates(theta, actions, rewards, baseline, old_theta=None):
    """ĝ for each row of ``actions`` (M, n): one estimate from n single-token rollouts.

    ``old_theta`` given: the rollouts came from π_old and eq. 27's ratio corrects for it.
    """
    m, n = actions.shape
    params = theta.expand(m, K).clone().requires_grad_()    # one private θ per estimate
    logits = params.unsqueeze(1).expand(m, n, K)
    logp = token_log_probs(logits, actions).reshape(m * n, 1)   # (B = m·n rollouts, T = 1)
    r = rewards[actions].reshape(m * n)
    if baseline == "none":
        loss, _ = policy_gradient_loss(logp, "no_baseline", raw_rewards=r)
    elif baseline == "constant":
        loss, _ = policy_gradient_loss(logp, "reinforce_with_baseline", advantages=r - CONSTANT_BASELINE)
    elif baseline in ("leave_one_out", "group_mean"):
        adv, _ = group_normalized_rewards(r, group_size=n, leave_one_out=baseline == "leave_one_out")
        loss, _ = policy_gradient_loss(logp, "reinforce_with_baseline", advantages=adv)
    elif baseline == "importance_ratio":
        old_logp = token_log_probs(old_theta.expand(m * n, K), actions.reshape(m * n)).reshape(m * n, 1)
        loss, _ = clipped_policy_gradient_loss(r - CONSTANT_BASELINE, logp, old_logp, cliprange=1e9)
    else:
        raise AssertionError(baseline)
    # aggregate_loss("sum") averages over all m·n rollouts; × m makes each row's gradient the
    # mean over its own n rollouts, eq. 26. backward() gives -ĝ (the loss is minimised).
    (m * aggregate_loss(loss, torch.ones_like(loss), "sum")).backward()
    return -params.grad


def all_groups(probs: torch.Tensor, n: int):
    """Every n-tuple of actions and its probability Π π(a_i)."""
    actions = torch.tensor(list(itertools.product(range(len(probs)), repeat=n)))
    return actions, probs[actions].prod(-1)


def exact_moments(estimates: torch.Tensor, weights: torch.Tensor):
    mean = weights @ estimates
    centred = estimates - mean
    return mean, (weights[:, None] * centred * centred).sum()  # E[ĝ], trace Cov[ĝ]


def monte_carlo(estimates: torch.Tensor):
    mean = estimates.mean(0)
    se = estimates.std(0) / estimates.shape[0] ** 0.5
    return mean, se, estimates.var(0).sum()  # mean, per-component standard error, trace Cov


def sample_actions(probs, m, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs, m * n, replacement=True, generator=g).view(m, n)


def assert_within_se(mean, se, exact, what):
    err = (mean - exact).abs()
    assert (err <= N_SE * se).all(), f"{what}: |mean - exact| = {err.tolist()} > {N_SE} SE = {(N_SE * se).tolist()}"


# ---------------------------------------------------------------------------------- bandit


@pytest.mark.parametrize("baseline", ["none", "constant", "leave_one_out"])
def test_reinforce_is_unbiased(baseline):
    exact = exact_bandit_gradient(THETA, REWARDS)
    probs = torch.softmax(THETA, -1)

    actions, weights = all_groups(probs, GROUP)               # 4^4 = 256 groups, exactly
    expected, _ = exact_moments(bandit_estimates(THETA, actions, REWARDS, baseline), weights)
    torch.testing.assert_close(expected, exact, atol=1e-10, rtol=0)   # eq. 25: E[ĝ] = ∇J

    est = bandit_estimates(THETA, sample_actions(probs, N_ESTIMATES, GROUP, seed=1), REWARDS, baseline)
    mean, se, _ = monte_carlo(est)
    # Power: the tolerance must be small next to the gradient, or a wrong estimator would pass too.
    assert (N_SE * se).max() < 0.5 * exact.abs().max(), "too few samples for the check to mean anything"
    assert_within_se(mean, se, exact, baseline)


def test_group_mean_including_own_reward_is_shrunk():
    # b = mean of the group *with* R_i depends on a_i, so eq. 24's term is not zero:
    # E[(R_i - mean) ∇log π_i] = (1 - 1/G) ∇J. Same direction, shorter — and measurably so.
    exact = exact_bandit_gradient(THETA, REWARDS)
    probs = torch.softmax(THETA, -1)
    actions, weights = all_groups(probs, GROUP)
    expected, _ = exact_moments(bandit_estimates(THETA, actions, REWARDS, "group_mean"), weights)
    torch.testing.assert_close(expected, (GROUP - 1) / GROUP * exact, atol=1e-10, rtol=0)

    est = bandit_estimates(THETA, sample_actions(probs, N_ESTIMATES, GROUP, seed=2), REWARDS, "group_mean")
    mean, se, _ = monte_carlo(est)
    assert ((mean - exact).abs() > N_SE * se).any(), "the Monte Carlo check cannot see a 25% bias"
    assert_within_se(mean, se, (GROUP - 1) / GROUP * exact, "group_mean")


def agent_estimates(theta, actions, rewards, baseline, running_mean=CONSTANT_BASELINE):
    """ĝ for each row of ``actions`` (M, n) as REINFORCE.update computes it: advantages from the
    baseline table (eq. 22a-d), then the one REINFORCE loss (eq. 26), summed per episode."""
    m, n = actions.shape
    params = theta.expand(m, K).clone().requires_grad_()
    logp = token_log_probs(params.unsqueeze(1).expand(m, n, K), actions).reshape(m * n, 1)
    r = rewards[actions].reshape(m * n)
    mask = torch.ones(m * n, 1, dtype=torch.bool)
    x = BaselineInputs(returns=r[:, None], mask=mask, episode_returns=r, group_size=n, running_mean=running_mean)
    loss, _ = reinforce_loss(logp, BASELINES[baseline](x), mask, "sum")
    (m * loss).backward()
    return -params.grad


@pytest.mark.parametrize("baseline, scale", [("none", 1.0), ("mean", 1.0), ("leave_one_out", 1.0), ("group", (GROUP - 1) / GROUP)])
def test_the_agents_baselines_and_loss_give_the_exact_expected_gradient(baseline, scale):
    # Unbiased for the state-only baselines (eq. 25); the group mean including R_i is shrunk (eq. 22c).
    exact = exact_bandit_gradient(THETA, REWARDS)
    actions, weights = all_groups(torch.softmax(THETA, -1), GROUP)
    expected, _ = exact_moments(agent_estimates(THETA, actions, REWARDS, baseline), weights)
    torch.testing.assert_close(expected, scale * exact, atol=1e-10, rtol=0)


def test_baseline_reduces_variance_with_large_positive_rewards():
    probs = torch.softmax(THETA, -1)
    actions = sample_actions(probs, N_ESTIMATES, GROUP, seed=3)   # the same rollouts for every estimator
    all_actions, weights = all_groups(probs, GROUP)
    measured, exact = {}, {}
    for baseline in ("none", "constant", "leave_one_out"):
        _, _, measured[baseline] = monte_carlo(bandit_estimates(THETA, actions, REWARDS, baseline))
        _, exact[baseline] = exact_moments(bandit_estimates(THETA, all_actions, REWARDS, baseline), weights)
        print(f"\ntrace Cov[ĝ], r = {REWARDS.tolist()}, {GROUP} rollouts per estimate, baseline={baseline:13s}: "
              f"measured {measured[baseline].item():.4f} (exact {exact[baseline].item():.4f})", end="")
    print()
    for baseline in measured:  # the measurement is the quantity enumerated, to within sampling error
        torch.testing.assert_close(measured[baseline], exact[baseline], rtol=0.05, atol=0)
    assert measured["constant"] < measured["none"] / 10
    assert measured["leave_one_out"] < measured["none"] / 10


# ---------------------------------------------------------------------------------- two tokens

# Tabular policy for a 2-token episode: π(a0 | s0) = softmax(θ0), π(a1 | s1 = s0‖a0) = softmax(θ1[a0]).
THETA0 = torch.tensor([0.2, -0.5, 0.3, 0.0], dtype=DT)
THETA1 = torch.tensor([[0.5, -0.2, 0.0, 0.1], [-0.4, 0.3, 0.2, 0.0],
                       [0.0, 0.0, 0.6, -0.6], [0.3, -0.1, -0.3, 0.4]], dtype=DT)
R2 = torch.tensor([[1.0, 0.0, 2.0, 0.5], [0.0, 3.0, 1.0, 0.0],
                   [2.0, 1.0, 0.0, 1.5], [0.5, 0.0, 1.0, 2.5]], dtype=DT)   # terminal reward R(a0, a1)


def exact_sequence_gradient():
    t0, t1 = THETA0.clone().requires_grad_(), THETA1.clone().requires_grad_()
    p = torch.softmax(t0, -1)[:, None] * torch.softmax(t1, -1)     # P(τ) = π(a0|s0) π(a1|s1)  (eq. 11)
    (p * R2).sum().backward()                                      # ∇ Σ_τ P(τ) R(τ)         (eq. 16)
    return torch.cat([t0.grad, t1.grad.flatten()])


def sequence_estimates(trajectories, baseline):
    """ĝ of eq. 20/22 for each single trajectory (a0, a1) in ``trajectories`` (M, 2)."""
    m = trajectories.shape[0]
    a0, a1 = trajectories[:, 0], trajectories[:, 1]
    p0 = THETA0.expand(m, K).clone().requires_grad_()
    p1 = THETA1.expand(m, K, K).clone().requires_grad_()
    logits = torch.stack([p0, p1[torch.arange(m), a0]], dim=1)      # (B, T = 2, K): per-state logits
    logp = token_log_probs(logits, trajectories)                   # (B, 2)
    mask = torch.ones(m, 2, dtype=torch.bool)
    rewards = torch.stack([torch.zeros(m, dtype=DT), R2[a0, a1]], dim=1)  # 0, then the verifier's score
    returns = discounted_returns(rewards, mask, gamma=1.0)         # eq. 5: [R(τ), R(τ)]
    if baseline == "none":
        loss, _ = policy_gradient_loss(logp, "no_baseline", raw_rewards=returns)
    else:
        if baseline == "state_value":   # b(s_t) = V^π(s_t): depends on the state only (eq. 22)
            b0 = (torch.softmax(THETA0, -1)[:, None] * torch.softmax(THETA1, -1) * R2).sum()
            b1 = (torch.softmax(THETA1, -1) * R2).sum(-1)[a0]
        elif baseline == "peeks_at_next_action":  # b(s_0) is a function of a_1: not state-only
            b0 = R2[2, a1]
            b1 = torch.zeros(m, dtype=DT)
        else:
            raise AssertionError(baseline)
        advantages = returns - torch.stack([b0.expand(m), b1], dim=1)  # (B, T): R(τ) - b(s_t)
        loss, _ = policy_gradient_loss(logp, "reinforce_with_baseline", advantages=advantages)
    (m * aggregate_loss(loss, mask, "sum")).backward()            # Σ_t per trajectory (eq. 20)
    return -torch.cat([p0.grad, p1.grad.flatten(1)], dim=1)


def enumerate_trajectories():
    trajectories = torch.tensor(list(itertools.product(range(K), repeat=2)))   # all K² = 16
    weights = torch.softmax(THETA0, -1)[trajectories[:, 0]] * torch.softmax(THETA1, -1)[trajectories[:, 0], trajectories[:, 1]]
    return trajectories, weights


@pytest.mark.parametrize("baseline", ["none", "state_value"])
def test_two_token_episode_per_token_sum_is_exact(baseline):
    exact = exact_sequence_gradient()
    trajectories, weights = enumerate_trajectories()
    expected, _ = exact_moments(sequence_estimates(trajectories, baseline), weights)
    torch.testing.assert_close(expected, exact, atol=1e-10, rtol=0)

    g = torch.Generator().manual_seed(4)
    a0 = torch.multinomial(torch.softmax(THETA0, -1), N_ESTIMATES, replacement=True, generator=g)
    a1 = torch.multinomial(torch.softmax(THETA1, -1)[a0], 1, generator=g).squeeze(1)
    mean, se, variance = monte_carlo(sequence_estimates(torch.stack([a0, a1], 1), baseline))
    print(f"\ntwo-token episode, baseline={baseline}: trace Cov[ĝ] = {variance.item():.4f}", end="")
    assert_within_se(mean, se, exact, baseline)


def test_baseline_that_peeks_at_a_later_action_is_biased():
    exact = exact_sequence_gradient()
    trajectories, weights = enumerate_trajectories()
    expected, _ = exact_moments(sequence_estimates(trajectories, "peeks_at_next_action"), weights)
    assert (expected - exact).abs().max() > 0.05


# ---------------------------------------------------------------------------------- off-policy

THETA_NEAR = THETA + torch.tensor([0.3, -0.2, 0.0, -0.4], dtype=DT)


@pytest.mark.parametrize("theta", [THETA, THETA_NEAR], ids=["theta_equals_old", "nearby_theta"])
def test_importance_ratio_recovers_on_policy_gradient(theta):
    exact = exact_bandit_gradient(theta, REWARDS)
    old_probs = torch.softmax(THETA, -1)                     # rollouts come from θ_old = THETA

    actions, weights = all_groups(old_probs, 1)
    expected, _ = exact_moments(bandit_estimates(theta, actions, REWARDS, "importance_ratio", THETA), weights)
    torch.testing.assert_close(expected, exact, atol=1e-10, rtol=0)  # E_old[ρ A ∇log π_θ] = ∇J(θ)

    sampled = sample_actions(old_probs, N_ESTIMATES, 1, seed=5)
    mean, se, _ = monte_carlo(bandit_estimates(theta, sampled, REWARDS, "importance_ratio", THETA))
    assert_within_se(mean, se, exact, "eq. 27")

    naive = bandit_estimates(theta, sampled, REWARDS, "constant")   # same samples, no ratio
    if theta is THETA:
        torch.testing.assert_close(mean, naive.mean(0), atol=1e-12, rtol=0)  # ρ = 1: eq. 27 is eq. 21
    else:
        naive_mean, naive_se, _ = monte_carlo(naive)
        assert ((naive_mean - exact).abs() > N_SE * naive_se).any(), "stale samples without the ratio should be visibly biased"
