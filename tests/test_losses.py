"""agents.losses against hand-computed cases, masks, low-precision inputs, errors and properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.losses import (
    adapt_entropy_coef,
    aggregate_loss,
    clipped_policy_gradient_loss,
    discounted_returns,
    entropy,
    group_normalized_rewards,
    informative_groups,
    kl_penalty,
    masked_mean,
    masked_normalize,
    masked_sum,
    naive_policy_gradient_loss,
    policy_gradient_loss,
    reinforce_loss,
    token_log_probs,
)


FAST = settings(max_examples=40, deadline=None)
LN2, LN3 = math.log(2.0), math.log(3.0)


def close(actual, expected, atol=1e-6):
    as64 = lambda v: v.double() if torch.is_tensor(v) else torch.tensor(v, dtype=torch.float64)
    torch.testing.assert_close(as64(actual), as64(expected), atol=atol, rtol=0)


# ---------------------------------------------------------------------------------- log-probs


def test_token_log_probs_by_hand():
    # logits log[1, 2, 3] → softmax = [1/6, 2/6, 3/6]; token 2 → log(1/2), token 0 → log(1/6)
    logits = torch.tensor([[0.0, LN2, LN3], [0.0, LN2, LN3]])
    close(token_log_probs(logits, torch.tensor([2, 0])), [math.log(1 / 2), math.log(1 / 6)])
    # T = 2: logits [0, 2 ln 2] / 2 = [0, ln 2] → softmax = [1/3, 2/3]
    close(token_log_probs(torch.tensor([0.0, 2 * LN2]), torch.tensor(1), temperature=2.0), math.log(2 / 3))


def test_token_log_probs_gradient_is_score_function():
    # ∇_logits log softmax(x)_a = onehot(a) - softmax(x)
    logits = torch.tensor([0.0, LN2, LN3], requires_grad=True)
    token_log_probs(logits, torch.tensor(1)).backward()
    close(logits.grad, [-1 / 6, 1 - 2 / 6, -3 / 6])


def test_token_log_probs_does_not_modify_inputs_and_allows_neg_inf():
    logits = torch.tensor([[1.0, float("-inf"), 0.0]])
    before = logits.clone()
    out = token_log_probs(logits, torch.tensor([1]), temperature=0.5)
    assert out.item() == float("-inf")  # a token ruled out by top-k has log-prob -inf
    assert torch.equal(logits, before)


@FAST
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    vocab=st.integers(1, 9),
    temperature=st.sampled_from([0.3, 1.0, 2.5]),
    seed=st.integers(0, 2**16),
)
def test_token_log_probs_matches_log_softmax(shape, vocab, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*shape, vocab, generator=g)
    tokens = torch.randint(0, vocab, shape, generator=g)
    expected = torch.log_softmax(logits / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    out = token_log_probs(logits, tokens, temperature)
    assert out.shape == tokens.shape and out.dtype == logits.dtype
    close(out, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_give_float32_close_to_fp32(dtype):
    g = torch.Generator().manual_seed(0)
    logits32 = 4 * torch.randn(3, 5, 1000, generator=g)
    tokens = torch.randint(0, 1000, (3, 5), generator=g)
    low = logits32.to(dtype).requires_grad_()
    lp = token_log_probs(low, tokens, temperature=0.7)
    h = entropy(low, temperature=0.7)
    assert lp.dtype == torch.float32 and h.dtype == torch.float32
    # Against fp32 math on the *same* (rounded) logits: only float32 rounding left.
    close(lp, token_log_probs(low.detach().float(), tokens, 0.7), atol=1e-5)
    # Against the original fp32 logits: the bf16 rounding of the inputs (|x| ≲ 16 → error ≲ 0.06 / T).
    close(lp, token_log_probs(logits32, tokens, 0.7), atol=0.2)
    close(h, entropy(logits32, 0.7), atol=0.1)
    lp.sum().backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()


def test_token_log_probs_errors():
    with pytest.raises(ValueError, match="shape"):
        token_log_probs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        token_log_probs(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), temperature=0.0)


def test_entropy_by_hand():
    # uniform over 4 → ln 4; p = [1/3, 2/3] → ln 3 - (2/3) ln 2; one certain token → 0
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, LN2, float("-inf"), float("-inf")], [5.0] + [float("-inf")] * 3])
    logits.requires_grad_()
    h = entropy(logits)
    close(h, [math.log(4), LN3 - 2 / 3 * LN2, 0.0])
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # T = 2 on logits [0, 2 ln 2] is p = [1/3, 2/3] again
    close(entropy(torch.tensor([0.0, 2 * LN2]), temperature=2.0), LN3 - 2 / 3 * LN2)


# ---------------------------------------------------------------------------------- masks

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_reductions_by_hand():
    close(masked_sum(X, M), 7.0)                     # 1 + 2 + 4
    close(masked_sum(X, M, dim=1), [3.0, 4.0])
    close(masked_mean(X, M), 7 / 3)
    close(masked_mean(X, M, dim=1), [1.5, 4.0])
    close(masked_mean(X, M, dim=0), [2.5, 2.0, 0.0])  # third column is empty → 0
    close(masked_normalize(X, M, 2.0), 3.5)
    close(masked_normalize(X, M, 4.0, dim=1), [0.75, 1.0])
    # a bool mask is the same as a 0/1 mask
    close(masked_mean(X, M.bool(), dim=1), [1.5, 4.0])


def test_masked_positions_are_never_read():
    poisoned = X.clone()
    poisoned[M == 0] = float("nan")
    poisoned[0, 2] = float("-inf")
    close(masked_mean(poisoned, M), 7 / 3)
    close(masked_sum(poisoned, M, dim=1), [3.0, 4.0])
    x = poisoned.clone().requires_grad_()
    masked_mean(x, M).backward()
    close(x.grad, M / 3.0)  # gradient 1/3 on the 3 real entries, 0 (not nan) elsewhere


def test_empty_mask_gives_zero_not_nan():
    x = torch.randn(2, 3, requires_grad=True)
    empty = torch.zeros(2, 3)
    for value in (masked_mean(x, empty), masked_sum(x, empty), masked_normalize(x, empty, 5.0), aggregate_loss(x, empty, "token_mean")):
        assert value.item() == 0.0
    masked_mean(x, empty).backward()
    assert torch.equal(x.grad, torch.zeros(2, 3))


def test_masked_normalize_rejects_zero_constant():
    with pytest.raises(ValueError, match="non-zero"):
        masked_normalize(X, M, 0)


def test_masked_mean_keeps_low_precision_dtype():
    out = masked_mean(X.bfloat16(), M, dim=1)
    assert out.dtype == torch.bfloat16
    close(out, [1.5, 4.0])


@FAST
@given(b=st.integers(1, 4), t=st.integers(1, 6), seed=st.integers(0, 2**16), dim=st.sampled_from([None, 0, 1, -1]))
def test_masked_mean_matches_python(b, t, seed, dim):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, generator=g) < 0.5
    out = masked_mean(x, mask, dim=dim)
    rows = x.tolist()
    keep = mask.tolist()
    if dim is None:
        vals = [v for r, k in zip(rows, keep) for v, m in zip(r, k) if m]
        close(out, sum(vals) / len(vals) if vals else 0.0, atol=1e-12)
        return
    lines = (list(zip(rows, keep)) if dim in (1, -1)
             else [([rows[i][j] for i in range(b)], [keep[i][j] for i in range(b)]) for j in range(t)])
    expected = []
    for values, ks in lines:
        sel = [v for v, m in zip(values, ks) if m]
        expected.append(sum(sel) / len(sel) if sel else 0.0)
    close(out, expected, atol=1e-12)


# ---------------------------------------------------------------------------------- returns


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])             # the 99 is padding and must be ignored
    close(discounted_returns(rewards, mask), [[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]])
    # γ = 1/2, r = [1, 0, 4]: G_2 = 4, G_1 = 0 + 4/2 = 2, G_0 = 1 + 2/2 = 2
    close(discounted_returns(torch.tensor([[1.0, 0.0, 4.0]]), torch.ones(1, 3), gamma=0.5), [[2.0, 2.0, 4.0]])
    # left padding: the discount counts real tokens only (G = [_, 1/2·4, 4])
    close(discounted_returns(torch.tensor([[7.0, 0.0, 4.0]]), torch.tensor([[0, 1, 1]]), gamma=0.5), [[0.0, 2.0, 4.0]])


def test_discounted_returns_errors():
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(torch.zeros(1, 2), torch.ones(1, 2), gamma=1.5)
    with pytest.raises(ValueError, match="same shape"):
        discounted_returns(torch.zeros(1, 2), torch.ones(1, 3))


@FAST
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=4), final=st.floats(-5, 5), seed=st.integers(0, 999))
def test_terminal_reward_undiscounted_return_is_final_reward(lengths, final, seed):
    t = max(lengths) + 1
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in lengths])
    rewards = torch.randn(len(lengths), t, generator=torch.Generator().manual_seed(seed)) * (1 - mask)  # junk in padding
    for i, n in enumerate(lengths):
        if n:
            rewards[i, n - 1] = final
    close(discounted_returns(rewards, mask, gamma=1.0), final * mask.double(), atol=1e-5)


@FAST
@given(t=st.integers(1, 7), gamma=st.sampled_from([0.0, 0.5, 0.9, 1.0]), seed=st.integers(0, 999))
def test_discounted_returns_match_definition(t, gamma, seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(3, t, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, t + 1, (3,), generator=g).tolist()
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in lengths])
    expected = [[sum(gamma ** (k - s) * r[i, k].item() for k in range(s, n)) if s < n else 0.0 for s in range(t)]
                for i, n in enumerate(lengths)]
    close(discounted_returns(r, mask, gamma), expected, atol=1e-10)


# ---------------------------------------------------------------------------------- group baselines


def test_group_normalized_rewards_by_hand():
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0])
    adv, meta = group_normalized_rewards(rewards, 4)
    close(adv, [-1.5, -0.5, 0.5, 1.5, 0, 0, 0, 0])          # group means 1.5 and 5
    # std with Bessel: sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3); second group std 0 → 0 / eps
    adv, _ = group_normalized_rewards(rewards, 4, normalize_by_std=True, eps=1e-6)
    s = math.sqrt(5 / 3) + 1e-6
    close(adv, [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s, 0, 0, 0, 0])
    # leave-one-out: b_0 = (1+2+3)/3 = 2, b_1 = 5/3, b_2 = 4/3, b_3 = 1
    adv, _ = group_normalized_rewards(rewards, 4, leave_one_out=True)
    close(adv, [-2.0, -2 / 3, 2 / 3, 2.0, 0, 0, 0, 0])
    # metadata: raw rewards 0,1,2,3,5,5,5,5 → mean 26/8, population std, max 5, min 0
    assert set(meta) == {"mean", "std", "max", "min"}
    close(meta["mean"], 3.25)
    close(meta["std"], math.sqrt(sum((r - 3.25) ** 2 for r in rewards.tolist()) / 8))
    close(meta["max"], 5.0)
    close(meta["min"], 0.0)


def test_group_normalized_rewards_accepts_int_rewards_and_group_of_one():
    adv, _ = group_normalized_rewards(torch.tensor([1, 0, 1]), 1)
    assert adv.dtype == torch.float32
    close(adv, [0.0, 0.0, 0.0])  # a group of one is its own baseline


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rewards=torch.zeros(6), group_size=4), "multiple of group_size"),
        (dict(rewards=torch.zeros(6), group_size=0), "group_size must be an integer >= 1"),
        (dict(rewards=torch.zeros(6), group_size=1, leave_one_out=True), "leave_one_out needs group_size >= 2"),
        (dict(rewards=torch.zeros(6), group_size=1, normalize_by_std=True), "normalize_by_std needs group_size >= 2"),
        (dict(rewards=torch.zeros(2, 3), group_size=3), "1-D"),
    ],
)
def test_group_normalized_rewards_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_normalized_rewards(**kwargs)


@FAST
@given(
    groups=st.integers(1, 4),
    group_size=st.integers(2, 5),
    normalize_by_std=st.booleans(),
    leave_one_out=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_group_advantages_invariant_to_per_group_shift(groups, group_size, normalize_by_std, leave_one_out, seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(groups * group_size, generator=g, dtype=torch.float64)
    shifts = (20 * torch.randn(groups, generator=g, dtype=torch.float64)).repeat_interleave(group_size)
    kw = dict(group_size=group_size, normalize_by_std=normalize_by_std, leave_one_out=leave_one_out)
    adv, _ = group_normalized_rewards(rewards, **kw)
    shifted, _ = group_normalized_rewards(rewards + shifts, **kw)
    close(shifted, adv, atol=1e-9)
    assert adv.shape == rewards.shape
    close(adv.view(groups, group_size).sum(-1), torch.zeros(groups), atol=1e-9)  # advantages centre each group
    if leave_one_out and not normalize_by_std:
        plain, _ = group_normalized_rewards(rewards, group_size)
        close(adv, plain * group_size / (group_size - 1), atol=1e-9)   # A_loo = G/(G-1) · A_mean


# ---------------------------------------------------------------------------------- pg losses


def test_naive_policy_gradient_loss_by_hand_and_gradient():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    loss = naive_policy_gradient_loss(torch.tensor([[2.0], [-1.0]]), logp)
    close(loss, [[2.0, 4.0], [-0.5, -3.0]])                   # -A · log π
    loss.sum().backward()
    close(logp.grad, [[-2.0, -2.0], [1.0, 1.0]])             # d/dlogπ = -A
    # (B,) and (B, T) advantages broadcast the same way
    close(naive_policy_gradient_loss(torch.tensor([2.0, -1.0]), logp), loss)
    close(naive_policy_gradient_loss(torch.tensor([[2.0, 2.0], [-1.0, -1.0]]), logp), loss)


def test_naive_loss_treats_advantages_as_constants_and_checks_shape():
    adv = torch.tensor([1.0, 2.0], requires_grad=True)
    naive_policy_gradient_loss(adv, torch.zeros(2, 3, requires_grad=True)).sum().backward()
    assert adv.grad is None
    with pytest.raises(ValueError, match=r"\(B,\), \(B, 1\) or \(B, T\)"):
        naive_policy_gradient_loss(torch.zeros(3, 1), torch.zeros(2, 3))


def _clip_case():
    # ratios: log(0.8/0.5) → 1.6 twice, log(0.25/0.5) → 0.5 twice; ε = 0.2, A = ±1
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.8, 0.8, 0.25, 0.25]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    return adv, new, old


def test_clipped_loss_by_hand():
    adv, new, old = _clip_case()
    loss, meta = clipped_policy_gradient_loss(adv, new, old, cliprange=0.2)
    # ρ=1.6,A=+1: min(1.6, 1.2)=1.2 clipped   ρ=1.6,A=-1: min(-1.6,-1.2)=-1.6
    # ρ=0.5,A=+1: min(0.5, 0.8)=0.5           ρ=0.5,A=-1: min(-0.5,-0.8)=-0.8 clipped
    close(loss, [[-1.2, 1.6, -0.5, 0.8]])
    close(meta["clip_fraction"], 0.5)
    close(meta["ratio_mean"], (1.6 + 1.6 + 0.5 + 0.5) / 4)
    # k3: (1.6 - 1 - ln 1.6) and (0.5 - 1 - ln 0.5), two of each
    close(meta["approx_kl"], ((0.6 - math.log(1.6)) + (-0.5 - math.log(0.5))) / 2)
    loss.sum().backward()
    # clipped tokens get no gradient; unclipped ones get -A·ρ (d/dlogπ of -A·exp(logπ - logπ_old))
    close(new.grad, [[0.0, 1.6, -0.5, 0.0]])
    # statistics can be restricted to real tokens
    _, meta = clipped_policy_gradient_loss(adv, new, old, 0.2, mask=torch.tensor([[1, 1, 0, 0]]))
    close(meta["clip_fraction"], 0.5)
    close(meta["ratio_mean"], 1.6)


def test_clip_higher_by_hand():
    """eq. 27b: the ceiling is 1 + ε_high, the floor stays 1 - ε_low."""
    adv, new, old = _clip_case()
    loss, meta = clipped_policy_gradient_loss(adv, new, old, cliprange=0.2, cliprange_high=0.28)
    # ρ=1.6,A=+1: min(1.6, 1.28)=1.28 clipped  ρ=1.6,A=-1: min(-1.6,-1.28)=-1.6
    # ρ=0.5,A=+1: min(0.5, 0.8)=0.5            ρ=0.5,A=-1: min(-0.5,-0.8)=-0.8 clipped (floor unchanged)
    close(loss, [[-1.28, 1.6, -0.5, 0.8]])
    close(meta["clip_fraction"], 0.5)
    # a ceiling above ρ = 1.6 lets that token's positive advantage through: its gradient is -A·ρ
    wide = new.detach().clone().requires_grad_()
    loss, meta = clipped_policy_gradient_loss(adv, wide, old, cliprange=0.2, cliprange_high=0.7)
    close(loss, [[-1.6, 1.6, -0.5, 0.8]])
    loss.sum().backward()
    close(wide.grad, [[-1.6, 1.6, -0.5, 0.0]])
    close(meta["clip_fraction"], 0.25)
    # None is the symmetric window of eq. 27a
    same, _ = clipped_policy_gradient_loss(adv, new, old, cliprange=0.2, cliprange_high=None)
    close(same, clipped_policy_gradient_loss(adv, new, old, cliprange=0.2)[0])
    with pytest.raises(ValueError, match="cliprange_high"):
        clipped_policy_gradient_loss(adv, new, old, cliprange=0.2, cliprange_high=0.0)


def test_informative_groups_by_hand():
    """eq. 22f: a group is informative when its rewards are not all equal."""
    returns = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.25, 0.0, 0.5, 0.5, 0.5, 0.5])
    assert informative_groups(returns, 3).tolist() == [False, False, True, False]
    assert informative_groups(returns, 4).tolist() == [True, True, False]
    assert informative_groups(returns, 1).tolist() == [False] * 12  # one reward is its own mean
    # exactly the groups whose group-mean advantages are not all zero
    advantages, _ = group_normalized_rewards(returns, 3)
    assert (advantages.view(-1, 3).abs().sum(1) > 0).tolist() == informative_groups(returns, 3).tolist()
    with pytest.raises(ValueError, match="multiple of group_size"):
        informative_groups(returns[:5], 3)
    with pytest.raises(ValueError, match="group_size"):
        informative_groups(returns, 0)


def test_adapt_entropy_coef_by_hand():
    """eq. 26b: β <- max(0, β + η (H* - H))."""
    close(torch.tensor(adapt_entropy_coef(0.0, entropy=0.2, target=0.5, lr=0.1)), 0.03)  # too certain: bonus grows
    close(torch.tensor(adapt_entropy_coef(0.03, entropy=0.9, target=0.5, lr=0.1)), 0.0)  # above target: decays, never < 0
    close(torch.tensor(adapt_entropy_coef(0.1, entropy=0.6, target=0.5, lr=0.1)), 0.09)
    assert adapt_entropy_coef(0.1, entropy=float("nan"), target=0.5, lr=0.1) == 0.1  # a skipped update: unchanged
    with pytest.raises(ValueError, match="lr"):
        adapt_entropy_coef(0.1, 0.2, 0.5, lr=0.0)


def test_clipped_loss_on_policy_gradient_equals_reinforce():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 4, generator=g)
    adv = torch.randn(3, 1, generator=g)
    a = logp.clone().requires_grad_()
    b = logp.clone().requires_grad_()
    clipped, meta = clipped_policy_gradient_loss(adv, a, logp, cliprange=0.2)
    clipped.sum().backward()
    naive_policy_gradient_loss(adv, b).sum().backward()
    close(a.grad, b.grad)                        # ρ = 1: eq. 27 reduces to eq. 21
    close(meta["clip_fraction"], 0.0)
    close(meta["approx_kl"], 0.0)


def test_clipped_loss_errors():
    with pytest.raises(ValueError, match="cliprange"):
        clipped_policy_gradient_loss(torch.ones(1, 1), torch.zeros(1, 2), torch.zeros(1, 2), 0.0)
    with pytest.raises(ValueError, match="old_log_probs"):
        clipped_policy_gradient_loss(torch.ones(1, 1), torch.zeros(1, 2), torch.zeros(1, 3), 0.2)


def test_kl_penalty_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    close(kl_penalty(logp, ref, "k1"), [LN2])
    close(kl_penalty(logp, ref, "k3"), [0.5 + LN2 - 1])   # e^{-ln 2} - (-ln 2) - 1
    with pytest.raises(ValueError, match="'k1' or 'k3'"):
        kl_penalty(logp, ref, "k2")


@FAST
@given(seed=st.integers(0, 2**16))
def test_kl_k3_nonnegative_and_zero_on_equal(seed):
    g = torch.Generator().manual_seed(seed)
    logp, ref = -3 * torch.rand(2, 5, generator=g), -3 * torch.rand(2, 5, generator=g)
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    close(kl_penalty(logp, logp, "k3"), torch.zeros(2, 5))


def test_kl_estimators_are_unbiased_for_true_kl():
    # Tokens drawn from π: E[k1] = E[k3] = KL(π‖π_ref) = Σ π log(π/π_ref).
    p, q = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    kl = (p * (p / q).log()).sum()
    for kind in ("k1", "k3"):
        close((p * kl_penalty(p.log(), q.log(), kind)).sum(), kl, atol=1e-12)


def test_policy_gradient_loss_dispatch():
    adv, new, old = _clip_case()
    loss, meta = policy_gradient_loss(new, "no_baseline", raw_rewards=adv)
    close(loss, naive_policy_gradient_loss(adv, new))
    assert meta == {}
    loss, meta = policy_gradient_loss(new, "reinforce_with_baseline", advantages=adv)
    close(loss, naive_policy_gradient_loss(adv, new))
    loss, meta = policy_gradient_loss(new, "clipped", advantages=adv, old_log_probs=old, cliprange=0.2)
    close(loss, [[-1.2, 1.6, -0.5, 0.8]])
    assert set(meta) == {"clip_fraction", "ratio_mean", "approx_kl"}


@pytest.mark.parametrize(
    "loss_type, kwargs, match",
    [
        ("no_baseline", dict(advantages=torch.ones(1, 1)), "needs raw_rewards"),
        ("reinforce_with_baseline", dict(raw_rewards=torch.ones(1, 1)), "needs advantages"),
        ("clipped", dict(advantages=torch.ones(1, 1)), "needs old_log_probs, cliprange"),
        ("ppo", dict(), "'no_baseline', 'reinforce_with_baseline', 'clipped'"),
    ],
)
def test_policy_gradient_loss_errors(loss_type, kwargs, match):
    with pytest.raises(ValueError, match=match):
        policy_gradient_loss(torch.zeros(1, 2), loss_type, **kwargs)


def test_aggregate_loss_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    close(aggregate_loss(loss, mask, "token_mean"), 10 / 4)        # (1+2+3+4) / 4 tokens
    close(aggregate_loss(loss, mask, "sequence_mean"), (2 + 4) / 2)  # mean(6/3, 4/1)
    close(aggregate_loss(loss, mask, "sum"), (6 + 4) / 2)           # eq. 26: mean_i Σ_t
    with pytest.raises(ValueError, match="'token_mean', 'sequence_mean', 'sum'"):
        aggregate_loss(loss, mask, "mean")


@FAST
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5), seed=st.integers(0, 999))
def test_aggregations_relate_through_lengths(lengths, seed):
    t = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in lengths])
    loss = torch.randn(len(lengths), t, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    n_tokens, n_seq = sum(lengths), len(lengths)
    # sum = token_mean · (#tokens / #sequences): same direction, length-dependent scale
    close(aggregate_loss(loss, mask, "sum"), aggregate_loss(loss, mask, "token_mean") * n_tokens / n_seq, atol=1e-10)
    if len(set(lengths)) == 1:  # equal lengths: sequence_mean and token_mean coincide
        close(aggregate_loss(loss, mask, "sequence_mean"), aggregate_loss(loss, mask, "token_mean"), atol=1e-10)


# ---------------------------------------------------------------------------------- the REINFORCE loss


def test_reinforce_loss_by_hand_on_and_off_policy():
    # Two episodes, three columns; the masked column holds -inf (a prompt token a restricted policy rules out).
    logp = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, -3.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([[2.0, 2.0, 0.0], [-1.0, -1.0, -1.0]])
    loss, stats = reinforce_loss(logp, adv, mask, "sum")
    close(loss, ((2 + 4) + (-0.5 - 3 - 1)) / 2)                 # eq. 26: (1/N) Σ_i Σ_t −A log π
    assert stats == {}
    loss.backward()
    close(logp.grad, [[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]])    # −A / N at the actions, 0 (not nan) elsewhere
    close(reinforce_loss(logp, adv, mask, "token_mean")[0], (6 - 4.5) / 5)

    # With old log-probs it is eq. 27a; at θ = θ_old its gradient is eq. 26's.
    on = logp.detach().clone().requires_grad_()
    loss, stats = reinforce_loss(on, adv, mask, "sum", old_log_probs=logp.detach(), cliprange=0.2)
    loss.backward()
    close(on.grad, [[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]])
    close(stats["clip_fraction"], 0.0)


def test_reinforce_loss_clipped_matches_the_building_block():
    adv, new, old = _clip_case()
    mask = torch.ones_like(adv, dtype=torch.bool)
    loss, stats = reinforce_loss(new, adv, mask, "sum", old_log_probs=old, cliprange=0.2)
    close(loss, -1.2 + 1.6 - 0.5 + 0.8)                        # eq. 27a, summed over the one episode
    close(stats["clip_fraction"], 0.5)


def test_reinforce_loss_adds_kl_and_entropy_terms():
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    entropy_ = torch.tensor([[1.0, 2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    adv = torch.zeros(1, 2)
    loss, stats = reinforce_loss(logp, adv, mask, "sum", ref_log_probs=ref, kl_coef=0.1, entropy=entropy_, entropy_coef=0.01)
    k3 = (0.5 - math.log(0.5) - 1.0) + 0.0                      # exp(x) − x − 1 with x = log π_ref − log π
    close(stats["kl"], k3 / 2)
    close(loss, 0.1 * k3 - 0.01 * 3.0)                          # eq. 26a
    # Off: no statistics, no terms; kl_coef > 0 with a -inf reference at a masked column stays finite.
    assert reinforce_loss(logp, adv, mask)[1] == {}
    ref_inf = torch.tensor([[float("-inf"), math.log(0.25)]])
    loss, _ = reinforce_loss(logp, adv, torch.tensor([[False, True]]), "sum", ref_log_probs=ref_inf, kl_coef=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
