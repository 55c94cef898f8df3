"""Policy-gradient math as small pure functions over tensors (no model, no env), with its equations.

Every function here takes tensors and returns tensors, so each line of math can be read next to the
equation it implements. The equations are below, in this module's own words, numbered in the order
of the classic derivation (policy, return, score-function estimator, baseline, loss, importance
ratio); a number with a letter is a variant or an addition. Code comments cite them as "eq. 22".

The problem
-----------
A language model is a stochastic policy over tokens. In state s_t (the prompt and the tokens so
far) it picks the next token a_t with probability

    (3)    π_θ(a_t | s_t) = softmax(f_θ(s_t) / T)_{a_t}

(T the sampling temperature; top-k / top-p only set some logits to -inf first). An episode
τ = (s_0, a_0, s_1, a_1, ..., s_T, a_T) earns rewards r_t; a verifier pays only at the last step. Its
return is the plain sum, or the discounted sum for 0 ≤ γ < 1:

    (5)    R(τ) = Σ_t r_t                          (6)    R(τ) = Σ_t γ^t r_t

and the reward-to-go from step t on is

    (6a)   G_t = Σ_{k ≥ t} γ^{k-t} r_k = r_t + γ G_{t+1}.

With one terminal reward and γ = 1, G_t = R(τ) at every step. The agent maximises
J(θ) = E_{τ~π_θ}[R(τ)] (eq. 7).

The score-function estimator (Williams, 1992)
---------------------------------------------
Write J as Σ_τ P(τ|θ) R(τ), differentiate, and use ∇P = P ∇log P (the log-derivative trick). The
start distribution and the transitions do not depend on θ, so only the policy's own factors of
log P(τ|θ) survive:

    (20)   ∇_θ J = E_τ[ Σ_t ∇_θ log π_θ(a_t|s_t) · R(τ) ]

and N sampled episodes give the unbiased estimate

    (21)   ĝ = (1/N) Σ_i Σ_t ∇_θ log π_θ(a_t^i|s_t^i) · R(τ^i).

An action cannot change rewards paid before it, so R(τ) may be replaced by the reward-to-go G_t of
eq. 6a without changing the expectation (the policy-gradient theorem of Sutton et al., 2000, in its
episodic form); textgym always weights step t by G_t, which equals R(τ) in the single-reward case.

Baselines
---------
The estimate is noisy: with rewards between 9 and 11 every sampled action is pushed up. Subtract a
baseline b(s_t) from the return:

    (22)   B = E_τ[ Σ_t ∇_θ log π_θ(a_t|s_t) · (G_t − b(s_t)) ],    A_t := G_t − b(s_t)

(A_t is the *advantage*). Why this leaves the gradient unchanged when b depends on the state alone:
split B into the eq. 20 term minus a baseline term, and in the baseline term take the expectation
over a_t first, with s_t fixed:

    (24)   E_{s_t}[ b(s_t) · E_{a_t~π_θ(·|s_t)}[ ∇_θ log π_θ(a_t|s_t) ] ] = E_{s_t}[ b(s_t) · ∇_θ Σ_a π_θ(a|s_t) ] = 0,

because the probabilities always sum to 1, so their gradient is 0. Hence

    (25)   B = ∇_θ J

for every state-only b, while a b close to the expected return makes A_t small and the variance with
it. A "baseline" that looks at a_t itself (or at later actions) is not covered by eq. 24 and biases
the estimate. The baselines of ``agents.baselines``, each a pure function returning A_t:

    (22a)  none:           b = 0 (eq. 21 itself)
    (22b)  mean:           b = a running mean of earlier batches' returns: m ← (1 − β) m + β mean(R)
    (22c)  group:          b_i = (1/G) Σ_{j in i's group} R_j, the mean over the G completions of the
                           same prompt (GRPO, Shao et al., 2024). It includes R_i itself, so it depends
                           on episode i's actions: the expectation is (G − 1)/G · ∇J, the right
                           direction, shortened. Optionally A divided by the group's std (GRPO).
    (22d)  leave_one_out:  b_i = 1/(G − 1) Σ_{j ≠ i} R_j, the mean over the *other* completions of the
                           prompt (RLOO, Ahmadian et al., 2024): independent of episode i, so eq. 24
                           applies and the estimate is unbiased.
    (22e)  value:          b = V_φ(s_t), a linear head on the LM's last hidden state, regressed to G_t
                           (it sees only the state: unbiased for any φ).

The loss
--------
An autograd framework needs a scalar whose gradient is ĝ. For the batch of N episodes:

    (26)   pg_loss = (1/N) Σ_i Σ_t log π_θ(a_t^i|s_t^i) · A_t^i,     A_t^i held constant,

whose gradient is eq. 21 (b = 0) or the sample form of eq. 22. It is not a loss in the usual sense:
its value says nothing about how good the policy is; log train and validation *rewards* instead.
An optimizer minimises, so the code writes the per-token term with a minus sign, −A_t log π, and
``backward()`` fills the gradients with −ĝ. How the (episode, token) terms are averaged — eq. 26's
sum per episode, or a mean over tokens — is ``aggregate_loss``'s choice (below). textgym adds two
optional per-token terms:

    (26a)  loss_t = −A_t log π_θ(a_t|s_t) − β_H H(π_θ(·|s_t)) + β_KL k3_t,
           k3_t = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1,

an entropy bonus, and Schulman's k3 estimate ("Approximating KL divergence", 2020) of KL(π_θ ‖ π_ref)
to a frozen copy of the initial policy: unbiased for tokens sampled from π_θ, and ≥ 0 on every token.

Several epochs per batch: the importance ratio
----------------------------------------------
Reusing a batch after a step means its episodes came from an older policy π_old. Reweighting each
token by how much more (or less) likely the current policy makes it corrects for that, to first
order (Degris et al., 2012):

    (27)   ĝ_off = (1/N) Σ_i Σ_t ρ_t^i ∇_θ log π_θ(a_t^i|s_t^i) · A_t^i,    ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t),

with π_old the *behaviour* probabilities recorded when the actions were sampled (so at θ = θ_old,
ρ = 1 and eq. 27 is eq. 21 exactly). ρ ∇log π = ∇ρ, so the scalar is −ρ_t A_t; PPO (Schulman et
al., 2017) keeps the step small by taking the pessimistic side of a clipped copy:

    (27a)  loss_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t).

Where the clipped branch is the smaller one the token contributes no gradient: the policy has
already moved as far as ε allows on it. The window need not be symmetric ("clip-higher", Yu et al.,
2025):

    (27b)  loss_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t),    ε_high ≥ ε_low.

With A_t > 0 only the upper bound binds, so a larger ε_high lets an unlikely token that did well
(ρ far above 1 after a step) keep gaining probability; a symmetric window stops exactly those first,
and with them the exploration, while already-likely tokens barely move under either. With A_t < 0
only the lower bound binds and it stays at 1 − ε_low.

Guards against learning the prior
---------------------------------
A policy can score well by giving one answer to every question (on a yes/no dataset that is 91%
"Yes", "Yes" scores 0.91). Four additions keep the update about the task:

    (22f)  dynamic sampling (DAPO, Yu et al., 2025). Under a group baseline a group whose G rewards
           are all equal has A_t = 0 on every token: it adds nothing to eq. 22 but dilutes the
           token mean. A group k is *informative* when max_i R_i − min_i R_i > 0 over its
           completions; the agent keeps sampling fresh prompts until the update holds the asked
           number of informative groups (or a bound on rounds is reached) and trains on those alone.
           Dropping a group changes which prompts the estimate averages over (those the policy
           neither always solves nor always fails), not the per-group estimate.

    (26b)  entropy control to a target H*: the bonus weight β_H of eq. 26a is a Lagrange multiplier
           for the constraint H ≥ H* on the mean token entropy, adapted by dual ascent after each
           update:  β_H ← max(0, β_H + η (H* − H)).  When the policy is more certain than H* the
           bonus grows; once it is above, the bonus decays to 0 and leaves the policy alone.

    (26c)  masking truncated completions: an episode the token budget cut off has its reward
           decided by the budget, not by its answer; with masking its tokens leave the loss (its
           reward still counts in the baselines of the other completions).

    (26d)  frontier sampling: a problem whose recent pass rate is 0 or 1 gives a group with
           (nearly) equal rewards, so it is drawn with a smaller weight w < 1 than the others
           (unseen problems weigh 1): P(problem p) ∝ w if its last pass rate ∈ {0, 1}, else 1.

Conventions
-----------
Shapes: B completions (sequences), T token positions, V vocabulary. Per-token tensors are ``(B, T)``
and right-padded; a ``mask`` marks the real tokens (bool, or 0/1 numbers: non-zero means "counts").
Values at masked-out positions are never read (``torch.where``, not ``x * mask``), so padding may
hold anything, even ``-inf`` or ``nan``.

Devices and dtypes follow the inputs: nothing here calls ``.cuda()`` or hard-codes a dtype. The one
exception is deliberate: ``token_log_probs`` and ``entropy`` compute the log-softmax in float32
when the logits are bf16/fp16 (a softmax over a 50k vocabulary in bf16 loses most of its precision)
and return float32; float32 and float64 logits keep their dtype.

Treated as constants: rewards, advantages, old (behaviour) log-probs and reference log-probs are
detached inside the losses. They multiply ∇log π in eq. 21-27 but are never differentiated.

How ``aggregate_loss`` weights long versus short completions (``per_token_loss`` (B, T) → scalar):

``"sum"``
    Σ_t over each sequence, mean over sequences: eq. 26 exactly, so the gradient is the unbiased
    estimate ĝ of eq. 21. A completion's weight grows with its length (L tokens → L terms), so
    long completions dominate the update and its variance grows with T.
``"token_mean"``
    Sum over every real token of the batch divided by the number of real tokens. Every token
    weighs the same (DAPO / Dr. GRPO style): equal to ``"sum"`` divided by the mean length, so the
    direction is ĝ's but the step size depends on how long this batch's completions happen to be.
``"sequence_mean"``
    Mean over the tokens of each sequence, then mean over sequences (the original GRPO). Every
    *completion* weighs the same, so each token of a long completion weighs 1/L: long completions
    are under-weighted per token. This is biased with respect to eq. 21 (it favours short correct
    answers and lets long wrong ones off lightly).

References: R. J. Williams (1992), "Simple statistical gradient-following algorithms for
connectionist reinforcement learning"; R. S. Sutton, D. McAllester, S. Singh, Y. Mansour (2000),
"Policy gradient methods for reinforcement learning with function approximation"; T. Degris,
M. White, R. S. Sutton (2012), "Off-policy actor-critic"; J. Schulman et al. (2017), "Proximal
policy optimization algorithms"; Z. Shao et al. (2024), "DeepSeekMath" (GRPO); A. Ahmadian et al.
(2024), "Back to basics: revisiting REINFORCE style optimization for learning from human feedback in
LLMs" (RLOO); J. Schulman (2020), "Approximating KL divergence" (k1/k3).
"""

from __future__ import annotations

import torch

__all__ = [
    "token_log_probs",
    "entropy",
    "masked_sum",
    "masked_mean",
    "masked_normalize",
    "discounted_returns",
    "group_normalized_rewards",
    "naive_policy_gradient_loss",
    "clipped_policy_gradient_loss",
    "kl_penalty",
    "informative_groups",
    "adapt_entropy_coef",
    "policy_gradient_loss",
    "aggregate_loss",
    "reinforce_loss",
    "LOSS_TYPES",
    "AGGREGATIONS",
]

LOSS_TYPES = ("no_baseline", "reinforce_with_baseline", "clipped")
AGGREGATIONS = ("token_mean", "sequence_mean", "sum")


# ----------------------------------------------------------------------------------------------
# Log-probabilities of the policy (eq. 3)
# ----------------------------------------------------------------------------------------------


def _softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 → float32; float32/float64 unchanged.
    return torch.promote_types(dtype, torch.float32)


def _scaled_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T in the softmax dtype, allocating at most one (..., V) tensor."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use a small value such as 1e-3 for near-greedy")
    x = logits.to(_softmax_dtype(logits.dtype))
    if temperature != 1.0:
        # Divide in place when the cast already made a private copy, so only one full tensor exists.
        x = x / temperature if x is logits else x.div_(temperature)
    return x


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π_θ(a_t | s_t) of the taken tokens (eq. 3): log-softmax(logits / T) gathered at ``tokens``.

    Args:
        logits: ``(..., V)`` scores at the positions that chose each token.
        tokens: ``(...)`` integer token ids, same leading shape as ``logits``.
        temperature: the sampling temperature T > 0 the tokens were (or would be) drawn with.

    Returns:
        ``(...)`` log-probabilities; float32 for bf16/fp16 logits, otherwise the logits' dtype.
        Differentiable with respect to ``logits``.

    Memory: computed as ``x[a] - logsumexp(x)`` with ``x = logits / T``, so at most one (..., V)
    tensor of the softmax dtype is allocated (none at all for float32 logits and T = 1) — the full
    log-softmax is never materialised.
    """
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(
            f"tokens must have the shape of logits without its last (vocabulary) dimension: "
            f"logits {tuple(logits.shape)} needs tokens {tuple(logits.shape[:-1])}, got {tuple(tokens.shape)}"
        )
    x = _scaled_logits(logits, temperature)
    chosen = x.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(x, dim=-1)  # eq. 3: log softmax(f_θ(s_t))_{a_t}


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy H(π(·|s_t)) = -Σ_a π(a) log π(a) of softmax(logits / T) at each position.

    Args:
        logits: ``(..., V)``; ``-inf`` entries (tokens ruled out, e.g. by top-k) are allowed.
        temperature: T > 0.

    Returns:
        ``(...)`` entropies in nats; float32 for bf16/fp16 logits, otherwise the logits' dtype.
        Differentiable (with a finite gradient even where some probabilities are exactly 0).
    """
    log_p = torch.log_softmax(_scaled_logits(logits, temperature), dim=-1)
    p = log_p.exp()
    # 0·log 0 = 0: zero the -inf log-probs before multiplying, or 0·(-inf) = nan.
    return -torch.linalg.vecdot(p, log_p.masked_fill(p == 0, 0.0))


# ----------------------------------------------------------------------------------------------
# Masked reductions
# ----------------------------------------------------------------------------------------------


def _masked(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x with masked-out entries set to 0, mask as bool), both broadcast to a common shape."""
    x, mask = torch.broadcast_tensors(x, mask.to(device=x.device, dtype=torch.bool))
    acc = _softmax_dtype(x.dtype) if x.is_floating_point() else torch.float32
    return torch.where(mask, x.to(acc), torch.zeros((), dtype=acc, device=x.device)), mask


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ of ``x`` over the entries where ``mask`` is set, over ``dim`` (all dimensions if None).

    ``x`` and ``mask`` broadcast against each other. Masked-out entries are never read, so they
    may be inf/nan. An empty mask sums to 0. The result has ``x``'s floating dtype (float32 for
    integer ``x``); the sum is accumulated in at least float32.
    """
    values, _ = _masked(x, mask)
    out = values.sum() if dim is None else values.sum(dim=dim)
    return out.to(x.dtype) if x.is_floating_point() else out


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is set, over ``dim`` (all dimensions if None).

    Where the mask selects nothing the mean is defined as **0** (with a zero gradient), not nan:
    a batch row with no real tokens then contributes nothing instead of poisoning the loss. Check
    ``mask.any()`` yourself if an empty selection is an error in your setting.
    """
    values, mask = _masked(x, mask)
    total = values.sum() if dim is None else values.sum(dim=dim)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    out = total / count.clamp(min=1).to(total.dtype)  # empty → 0 / 1 = 0
    return out.to(x.dtype) if x.is_floating_point() else out


def masked_normalize(
    x: torch.Tensor, mask: torch.Tensor, normalize_constant: float, dim: int | None = None
) -> torch.Tensor:
    """Σ of ``x`` over ``mask`` (over ``dim``), divided by a fixed ``normalize_constant``.

    The "divide by the maximum number of tokens" aggregation (Dr. GRPO): unlike ``masked_mean`` the
    denominator does not depend on how many tokens are real, so every token weighs the same in
    every batch. An empty mask gives 0. ``normalize_constant`` must be non-zero.
    """
    if normalize_constant == 0:
        raise ValueError("normalize_constant must be non-zero; pass e.g. the maximum number of generated tokens")
    return masked_sum(x, mask, dim=dim) / normalize_constant


# ----------------------------------------------------------------------------------------------
# Returns (eq. 5-6) and group baselines (eq. 22)
# ----------------------------------------------------------------------------------------------


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Reward-to-go G_t = Σ_{k≥t} γ^{k-t} r_k at every real token (eq. 5 for γ = 1, eq. 6 for γ < 1).

    Args:
        rewards: ``(..., T)`` per-token rewards r_t (for a verifier: 0 everywhere but the last
            real token, which holds the score).
        mask: ``(..., T)`` real tokens. Rewards at masked-out positions are ignored and the
            discount counts only real tokens, so right, left or inner padding all work.
        gamma: discount 0 ≤ γ ≤ 1.

    Returns:
        ``(..., T)`` returns, 0 at masked-out positions, in ``rewards``' floating dtype (float32
        for integer rewards). With a terminal-only reward and γ = 1 every real token's return
        equals that final reward, so ``R(τ)`` of eq. 20 and the reward-to-go coincide.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if rewards.shape != mask.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and mask {tuple(mask.shape)} must have the same shape")
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    rewards, mask = rewards.to(dtype), mask.to(device=rewards.device, dtype=torch.bool)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        real = mask[..., t]
        running = torch.where(real, rewards[..., t] + gamma * running, running)  # G_t = r_t + γ G_{t+1}
        returns[..., t] = torch.where(real, running, torch.zeros_like(running))
    return returns


def group_normalized_rewards(
    rewards: torch.Tensor,
    group_size: int,
    normalize_by_std: bool = False,
    eps: float = 1e-6,
    leave_one_out: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantages A_i = R_i - b_i with a baseline from the other completions of the same prompt.

    Groups are consecutive blocks of ``group_size`` rewards (completions i·G … i·G+G-1 answer the
    same prompt, as the vector env lays them out).

    - ``leave_one_out=False``: b_i = mean of the group, *including* R_i (GRPO). Because b_i
      depends on completion i's own action, the estimator's expectation is (G-1)/G · ∇J: the
      direction is right, the length shrinks. With G = 1 every advantage is 0.
    - ``leave_one_out=True``: b_i = mean of the G-1 *other* rewards (RLOO). It does not depend on
      completion i's action, so eq. 22-25 apply and the estimator is unbiased. Needs G ≥ 2.
      (A_i then equals G/(G-1) times the mean-baseline advantage.)
    - ``normalize_by_std``: divide by (group std + eps), std with Bessel's correction (as
      ``torch.std``; GRPO). Needs G ≥ 2.

    Args:
        rewards: ``(N,)`` raw rewards, N a multiple of ``group_size``.

    Returns:
        ``(advantages, metadata)``: advantages ``(N,)`` in ``rewards``' floating dtype (float32
        for integer rewards); metadata holds detached 0-d tensors ``"mean"``, ``"std"``
        (population std, 0 for a single reward), ``"max"``, ``"min"`` of the raw rewards — call
        ``float()`` on them to log.
    """
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one reward per completion), got shape {tuple(rewards.shape)}; flatten it first")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1 (completions per prompt), got {group_size!r}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}: pass a number of rewards "
            f"that is a multiple of group_size (group_size completions per prompt, prompts back to back)"
        )
    if leave_one_out and group_size < 2:
        raise ValueError("leave_one_out needs group_size >= 2 (the baseline is the mean of the *other* rewards); use group_size >= 2 or leave_one_out=False")
    if normalize_by_std and group_size < 2:
        raise ValueError("normalize_by_std needs group_size >= 2 (the std of one reward is undefined); use group_size >= 2 or normalize_by_std=False")

    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    raw = rewards.to(dtype)
    grouped = raw.view(-1, group_size)                                    # (prompts, G)
    if leave_one_out:
        baseline = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)  # b_i = mean_{j≠i} R_j
    else:
        baseline = grouped.mean(-1, keepdim=True)                         # b = mean_j R_j
    advantages = grouped - baseline                                       # eq. 22: R(τ) - b
    if normalize_by_std:
        advantages = advantages / (grouped.std(-1, keepdim=True) + eps)  # GRPO scale normalisation
    detached = raw.detach()
    metadata = {
        "mean": detached.mean(),
        "std": detached.std(correction=0),
        "max": detached.max(),
        "min": detached.min(),
    }
    return advantages.reshape(-1), metadata


# ----------------------------------------------------------------------------------------------
# Policy-gradient losses (eq. 21, 26, 27)
# ----------------------------------------------------------------------------------------------


def _per_token(advantages: torch.Tensor, policy_log_probs: torch.Tensor, name: str = "advantages") -> torch.Tensor:
    """Detach and shape a per-sequence or per-token weight so it broadcasts over (B, T)."""
    advantages = torch.as_tensor(advantages, device=policy_log_probs.device).detach()
    if advantages.dim() == policy_log_probs.dim() - 1:
        advantages = advantages.unsqueeze(-1)  # (B,) → (B, 1): one value per sequence
    try:
        shape = torch.broadcast_shapes(advantages.shape, policy_log_probs.shape)
    except RuntimeError:
        shape = None
    if shape != policy_log_probs.shape:
        raise ValueError(
            f"{name} of shape {tuple(advantages.shape)} must be (B,), (B, 1) or (B, T) to match "
            f"policy_log_probs {tuple(policy_log_probs.shape)}"
        )
    return advantages


def naive_policy_gradient_loss(advantages: torch.Tensor, policy_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token REINFORCE loss -A_t · log π_θ(a_t|s_t) (eq. 26 with the sign for minimisation).

    Args:
        advantages: ``(B,)``, ``(B, 1)`` or ``(B, T)`` weights — raw returns R(τ) (eq. 21) or
            R(τ) - b(s_t) (eq. 22). Detached: a constant in the gradient.
        policy_log_probs: ``(B, T)`` log π_θ(a_t|s_t), differentiable.

    Returns:
        ``(B, T)`` per-token loss; aggregate it with ``aggregate_loss``.
    """
    advantages = _per_token(advantages, policy_log_probs)
    return -advantages * policy_log_probs  # eq. 26: ∇(-A log π) = -A ∇log π = -ĝ term


def clipped_policy_gradient_loss(
    advantages: torch.Tensor,
    policy_log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    cliprange: float,
    mask: torch.Tensor | None = None,
    cliprange_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token importance-weighted loss with PPO/GRPO clipping (eq. 27a, or 27b with ``cliprange_high``).

    ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t) = exp(log π_θ - log π_old), and the loss is
    -min(ρ_t A_t, clip(ρ_t, 1-ε, 1+ε) A_t). Where the unclipped branch is taken its gradient is
    -ρ_t A_t ∇log π_θ, eq. 27's term; with ρ = 1 (θ = θ_old) it is REINFORCE's. Where clipping
    is taken the token contributes no gradient.

    Args:
        advantages: ``(B,)``, ``(B, 1)`` or ``(B, T)``, detached.
        policy_log_probs: ``(B, T)`` log π_θ, differentiable.
        old_log_probs: ``(B, T)`` log π_old of the same tokens, recorded when they were sampled
            (detached).
        cliprange: ε > 0 (ε_low of eq. 27b: the ratio's floor is 1 − ε).
        mask: optional ``(B, T)`` real tokens, used only for the metadata statistics (the loss
            itself is per token; mask it when aggregating).
        cliprange_high: ε_high of eq. 27b (the ratio's ceiling is 1 + ε_high); None: ``cliprange``.

    Returns:
        ``(per_token_loss (B, T), metadata)``; metadata holds detached 0-d tensors over the real
        tokens: ``"clip_fraction"`` (fraction of tokens where the clipped branch was strictly
        smaller, i.e. taken), ``"ratio_mean"`` (mean ρ) and ``"approx_kl"`` (mean of
        (ρ-1) - log ρ, the k3 estimate of KL(π_old ‖ π_θ) from samples of π_old).
    """
    if not cliprange > 0:
        raise ValueError(f"cliprange must be > 0, got {cliprange}")
    high = cliprange if cliprange_high is None else cliprange_high
    if not high > 0:
        raise ValueError(f"cliprange_high must be > 0 (or None for the symmetric window), got {cliprange_high}")
    if old_log_probs.shape != policy_log_probs.shape:
        raise ValueError(f"old_log_probs {tuple(old_log_probs.shape)} must match policy_log_probs {tuple(policy_log_probs.shape)}")
    advantages = _per_token(advantages, policy_log_probs)
    log_ratio = policy_log_probs - old_log_probs.detach()
    ratio = torch.exp(log_ratio)                                          # eq. 27: π_θ / π_θold
    unclipped = ratio * advantages                                        # eq. 27 term
    clipped = torch.clamp(ratio, 1.0 - cliprange, 1.0 + high) * advantages  # eq. 27b: [1 - ε_low, 1 + ε_high]
    per_token_loss = -torch.minimum(unclipped, clipped)

    if mask is None:
        mask = torch.ones_like(policy_log_probs, dtype=torch.bool)
    with torch.no_grad():
        metadata = {
            "clip_fraction": masked_mean((clipped < unclipped).float(), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
        }
    return per_token_loss, metadata


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from tokens sampled from π_θ (Schulman's k1 / k3).

    - ``"k1"``: log π - log π_ref. Unbiased, but negative on some tokens, high variance.
    - ``"k3"``: exp(log π_ref - log π) - (log π_ref - log π) - 1. Unbiased and ≥ 0 on every
      token (e^x ≥ 1 + x), lower variance; the GRPO default.

    ``ref_log_probs`` is detached; the result has ``log_probs``' shape and stays differentiable.
    """
    ref_log_probs = ref_log_probs.detach()
    if kind == "k1":
        return log_probs - ref_log_probs
    if kind == "k3":
        log_ratio = ref_log_probs - log_probs
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown kl kind {kind!r}; expected 'k1' or 'k3'")


def informative_groups(returns: torch.Tensor, group_size: int, tolerance: float = 1e-9) -> torch.Tensor:
    """Which groups carry a policy gradient under a group baseline (eq. 22f): max R − min R > tolerance.

    Args:
        returns: ``(N,)`` episode returns R(τ), N a multiple of ``group_size``, groups consecutive.
        group_size: G ≥ 1 (with G = 1 no group is informative: its one reward is its own mean).

    Returns:
        ``(N / G,)`` bool, True where the group's rewards are not all equal.
    """
    returns = torch.as_tensor(returns)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    if returns.dim() != 1 or returns.numel() % group_size != 0:
        raise ValueError(f"returns must be 1-D with a multiple of group_size={group_size} entries, got shape {tuple(returns.shape)}")
    grouped = returns.reshape(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > tolerance  # eq. 22f


def adapt_entropy_coef(coef: float, entropy: float, target: float, lr: float) -> float:
    """One dual-ascent step of the entropy bonus weight (eq. 26b): max(0, β + η (H* − H)).

    A non-finite ``entropy`` (an update that was skipped) leaves β unchanged.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if entropy != entropy or entropy in (float("inf"), float("-inf")):
        return float(coef)
    return max(0.0, float(coef) + lr * (float(target) - float(entropy)))  # eq. 26b


def policy_gradient_loss(
    policy_log_probs: torch.Tensor,
    loss_type: str,
    raw_rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    cliprange: float | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token policy-gradient loss, dispatched on ``loss_type``.

    - ``"no_baseline"``: -R(τ) · log π (eq. 21); needs ``raw_rewards``.
    - ``"reinforce_with_baseline"``: -(R(τ) - b) · log π (eq. 22); needs ``advantages``.
    - ``"clipped"``: eq. 27 with clipping; needs ``advantages``, ``old_log_probs``, ``cliprange``.

    Arguments a loss type does not need are ignored. ``mask`` only feeds the clipped loss's
    statistics.

    Returns:
        ``(per_token_loss (B, T), metadata)``: metadata is ``{}`` for the first two types and the
        ``clip_fraction`` / ``ratio_mean`` / ``approx_kl`` dict of
        ``clipped_policy_gradient_loss`` for ``"clipped"``.
    """
    required = {
        "no_baseline": {"raw_rewards": raw_rewards},
        "reinforce_with_baseline": {"advantages": advantages},
        "clipped": {"advantages": advantages, "old_log_probs": old_log_probs, "cliprange": cliprange},
    }
    if loss_type not in required:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(repr(t) for t in LOSS_TYPES)}")
    missing = [name for name, value in required[loss_type].items() if value is None]
    if missing:
        raise ValueError(f"loss_type={loss_type!r} needs {', '.join(missing)}")

    if loss_type == "no_baseline":
        return naive_policy_gradient_loss(raw_rewards, policy_log_probs), {}  # eq. 21
    if loss_type == "reinforce_with_baseline":
        return naive_policy_gradient_loss(advantages, policy_log_probs), {}  # eq. 22
    return clipped_policy_gradient_loss(advantages, policy_log_probs, old_log_probs, cliprange, mask=mask)  # eq. 27


def aggregate_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce a ``(B, T)`` per-token loss over the real tokens to the scalar to ``.backward()``.

    Modes (see the module docstring for how each weights long vs short completions):
    ``"sum"`` = (1/B) Σ_i Σ_t (eq. 26 exactly), ``"token_mean"`` = Σ over real tokens / their
    count, ``"sequence_mean"`` = mean over sequences of each sequence's token mean. Sequences with
    no real token count as 0 in ``"sum"`` and ``"sequence_mean"``; an all-empty mask gives 0.
    Leading dimensions beyond one are all treated as sequences.
    """
    if mode == "token_mean":
        return masked_mean(per_token_loss, mask)                       # Σ_{i,t} / #tokens
    if mode == "sequence_mean":
        return masked_mean(per_token_loss, mask, dim=-1).mean()      # mean_i (Σ_t / L_i)
    if mode == "sum":
        return masked_sum(per_token_loss, mask, dim=-1).mean()        # eq. 26: (1/N) Σ_i Σ_t
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {', '.join(repr(m) for m in AGGREGATIONS)}")


# ----------------------------------------------------------------------------------------------
# The REINFORCE loss of one batch (eq. 26 / 27a, plus the terms of eq. 26a)
# ----------------------------------------------------------------------------------------------


def reinforce_loss(
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "token_mean",
    *,
    old_log_probs: torch.Tensor | None = None,
    cliprange: float = 0.2,
    cliprange_high: float | None = None,
    ref_log_probs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scalar whose ``backward()`` gives −ĝ: REINFORCE with any baseline, on- or off-policy.

    Args:
        log_probs: ``(B, T)`` log π_θ(a_t|s_t) under the sampling distribution, differentiable.
        advantages: ``(B, T)`` A_t = G_t − b(s_t) from ``agents.baselines`` (b = 0: eq. 21).
        mask: ``(B, T)`` the positions that are actions (only they are trained on).
        aggregation: ``"token_mean"``, ``"sequence_mean"`` or ``"sum"`` (see the module docstring).
        old_log_probs: the behaviour log-probs recorded when the actions were sampled; given, the
            loss is the clipped importance-ratio one (eq. 27a) instead of eq. 26.
        cliprange, cliprange_high: ε_low and ε_high of eq. 27b (``cliprange_high=None``: eq. 27a's ε).
        ref_log_probs, kl_coef: log π_ref of a frozen reference policy and the weight β_KL of the
            k3 penalty (eq. 26a; 0: off).
        entropy, entropy_coef: per-position entropy H(π_θ(·|s_t)) and its bonus weight β_H.

    Returns:
        ``(loss, stats)``: the 0-d loss and detached 0-d statistics (``clip_fraction`` with
        ``old_log_probs``, ``kl`` with ``kl_coef > 0``).
    """
    mask = mask.to(device=log_probs.device, dtype=torch.bool)
    logp = torch.where(mask, log_probs, 0.0)  # only actions: a prompt token's log π may be -inf (restricted policy)
    stats: dict[str, torch.Tensor] = {}
    if old_log_probs is None:
        per_token = naive_policy_gradient_loss(advantages, logp)  # eq. 26: −A_t log π_θ(a_t|s_t)
    else:
        old = torch.where(mask, old_log_probs, 0.0)
        per_token, meta = clipped_policy_gradient_loss(advantages, logp, old, cliprange, mask=mask,
                                                       cliprange_high=cliprange_high)  # eq. 27a / 27b
        stats["clip_fraction"] = meta["clip_fraction"]
    if entropy_coef > 0:
        per_token = per_token - entropy_coef * entropy  # eq. 26a: − β_H H(π_θ(·|s_t))
    if kl_coef > 0:
        kl = kl_penalty(logp, torch.where(mask, ref_log_probs, 0.0), kind="k3")  # eq. 26a: k3 ≈ KL(π_θ ‖ π_ref)
        per_token = per_token + kl_coef * kl
        stats["kl"] = masked_mean(kl.detach(), mask)
    return aggregate_loss(per_token, mask, aggregation), stats
