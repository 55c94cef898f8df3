"""REINFORCE on a bandit, with and without a baseline.

A handful of actions, each with a reward you set. The policy is one softmax over the actions,
pi_theta(a) = softmax(theta)_a. Every episode goes through textgym's `bandit` task: the env shows
the prompt, the policy writes one character, the env pays that action's reward. Watch the action
distribution migrate toward what you reward, then see the baseline make it smoother: with rewards
that are all large and positive the gradient without a baseline is dominated by the reward level.

    python examples/bandit.py --rewards A=10,B=10.5,C=11,D=9 --out bandit.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import textgym  # noqa: E402
from agents.losses import aggregate_loss, group_normalized_rewards, policy_gradient_loss, token_log_probs  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--rewards", default="A=10,B=10.5,C=11,D=9", help="action=reward pairs")
parser.add_argument("--updates", type=int, default=200, help="policy updates per run")
parser.add_argument("--batch", type=int, default=8, help="episodes per update")
parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate on theta")
parser.add_argument("--estimates", type=int, default=500, help="gradient estimates for the variance at theta_0")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="bandit.png", help="where to save the plot")
args = parser.parse_args()

envs = textgym.TextGenVectorEnv(num_envs=args.batch, task="bandit", tokenizer="char", max_new_tokens=1,
                                task_kwargs={"rewards": args.rewards})
actions = envs.task.answer_chars                                   # e.g. "ABCD"
action_tokens = np.array(envs.tokenizer.encode(actions))          # the env's token id of each action
episode_mask = torch.ones(args.batch, 1)                           # one token per episode


def rollout(theta: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of episodes through env.step: (chosen action indices (B,), rewards (B,))."""
    envs.reset()
    probs = torch.softmax(theta.detach(), dim=-1)                  # pi_theta(a) = softmax(theta)_a
    chosen = torch.multinomial(probs.expand(args.batch, -1), 1, generator=generator).squeeze(-1)
    _, rewards, terminated, truncated, _ = envs.step(action_tokens[chosen.numpy()])
    assert (terminated | truncated).all()                          # a bandit episode is one step
    return chosen, torch.as_tensor(rewards, dtype=torch.float32)


def loss_fn(theta: torch.Tensor, chosen: torch.Tensor, rewards: torch.Tensor, baseline: bool) -> torch.Tensor:
    log_probs = token_log_probs(theta.expand(args.batch, -1), chosen)[:, None]  # log pi(a_i), (B, 1)
    if baseline:  # eq. 22: R - b, b = mean of the *other* episodes' rewards (leave-one-out: unbiased)
        advantages, _ = group_normalized_rewards(rewards, group_size=args.batch, leave_one_out=True)
        per_token, _ = policy_gradient_loss(log_probs, "reinforce_with_baseline", advantages=advantages[:, None])
    else:         # eq. 21: R(tau) * grad log pi
        per_token, _ = policy_gradient_loss(log_probs, "no_baseline", raw_rewards=rewards[:, None])
    return aggregate_loss(per_token, episode_mask, "sum")            # eq. 26: mean over episodes


def gradient(theta: torch.Tensor, baseline: bool, generator: torch.Generator) -> torch.Tensor:
    theta = theta.detach().requires_grad_(True)
    chosen, rewards = rollout(theta, generator)
    loss_fn(theta, chosen, rewards, baseline).backward()
    return -theta.grad                                             # the ascent direction g_hat


def gradient_variance(baseline: bool) -> float:
    """tr Cov[g_hat] over many independent estimates at the initial theta (uniform policy)."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    envs.reset(seed=args.seed)
    grads = torch.stack([gradient(torch.zeros(len(actions)), baseline, generator) for _ in range(args.estimates)])
    return float(grads.var(dim=0).sum())


def train(baseline: bool) -> np.ndarray:
    """REINFORCE from the uniform policy; returns pi_theta after every update, (updates + 1, K)."""
    generator = torch.Generator().manual_seed(args.seed)
    envs.reset(seed=args.seed)
    theta = torch.zeros(len(actions), requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=args.lr)
    history = [torch.softmax(theta.detach(), -1).numpy()]
    for _ in range(args.updates):
        chosen, rewards = rollout(theta, generator)                # sample, reward ...
        optimizer.zero_grad()
        loss_fn(theta, chosen, rewards, baseline).backward()       # ... gradient of -J ...
        optimizer.step()                                           # ... theta += lr * g_hat
        history.append(torch.softmax(theta.detach(), -1).numpy())
    return np.array(history)


rewards_text = ", ".join(f"{a}={r:g}" for a, r in envs.task.action_rewards.items())
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
print(f"bandit {rewards_text}: {args.batch} episodes per update, lr {args.lr}")
for ax, baseline in zip(axes, (False, True)):
    name = "with baseline" if baseline else "without baseline"
    history = train(baseline)
    variance = gradient_variance(baseline)
    print(f"{name:>17}: gradient variance tr Cov[g] = {variance:.4f}   "
          f"final pi = {' '.join(f'{a}:{p:.2f}' for a, p in zip(actions, history[-1]))}")
    ax.stackplot(np.arange(len(history)), history.T, labels=list(actions))
    ax.set(title=f"REINFORCE {name}\ntr Cov[g] at theta_0 = {variance:.3g}", xlabel="update", xlim=(0, args.updates), ylim=(0, 1))
axes[0].set_ylabel("pi_theta(action)")
axes[1].legend(loc="upper left", title="action", fontsize=8)
fig.suptitle(f"Action distribution over updates (rewards {rewards_text})")
fig.tight_layout()
fig.savefig(args.out, dpi=100)
print(f"saved {args.out}")
