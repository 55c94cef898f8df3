"""agents.baselines: each baseline's advantages by hand, the table, and the errors.

Two episodes per prompt (G = 2), three action columns, rewards only at each episode's last action,
so the returns G_t are easy to write down."""

import typing

import pytest
import torch

from agents.baselines import BASELINES, GROUPED, BaselineInputs, group_std
from agents.losses import discounted_returns
from agents.reinforce import REINFORCEConfig


MASK = torch.tensor([[True, True, False], [True, True, True], [True, False, False], [True, True, False]])
REWARDS = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [2.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
R = REWARDS.sum(1)  # 1, 3 | 2, 6: two prompts, two completions each


def inputs(gamma=1.0, **kw):
    returns = discounted_returns(REWARDS, MASK, gamma)
    return BaselineInputs(returns, MASK, R, **{"group_size": 2, **kw})


def expected(b):
    """G_t - b at the actions, 0 elsewhere; b per episode."""
    b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 1)
    return torch.where(MASK, inputs().returns - b, torch.zeros(()))


def test_returns_are_the_reward_to_go_at_every_action():
    torch.testing.assert_close(inputs().returns, torch.tensor([[1.0, 1.0, 0.0], [3.0, 3.0, 3.0], [2.0, 0.0, 0.0], [6.0, 6.0, 0.0]]))


@pytest.mark.parametrize(
    "name, b",
    [
        ("none", [0.0, 0.0, 0.0, 0.0]),                 # eq. 22a
        ("mean", [0.5, 0.5, 0.5, 0.5]),                 # eq. 22b: the running mean given
        ("group", [2.0, 2.0, 4.0, 4.0]),                # eq. 22c: (1 + 3) / 2, (2 + 6) / 2
        ("leave_one_out", [3.0, 1.0, 6.0, 2.0]),        # eq. 22d: the other one's return
    ],
)
def test_each_baseline_by_hand(name, b):
    torch.testing.assert_close(BASELINES[name](inputs(running_mean=0.5)), expected(b))


def test_value_baseline_subtracts_v_of_each_state():
    values = torch.tensor([[0.5, 0.25, 9.0], [1.0, 2.0, 3.0], [0.0, 9.0, 9.0], [4.0, 5.0, 9.0]])
    got = BASELINES["value"](inputs(values=values))
    torch.testing.assert_close(got, torch.where(MASK, inputs().returns - values, torch.zeros(())))  # eq. 22e, per token
    with pytest.raises(ValueError, match="needs V"):
        BASELINES["value"](inputs())


def test_group_std_normalisation_is_grpos():
    std = group_std(inputs(), eps=0.0)  # Bessel-corrected std of (1, 3) and (2, 6), at every action
    torch.testing.assert_close(std[:, 0], torch.tensor([2**0.5, 2**0.5, 8**0.5, 8**0.5]))
    assert (std[MASK] == std[:, :1].expand_as(std)[MASK]).all()


def test_advantages_are_zero_off_the_actions_and_do_not_depend_on_padding():
    padded = inputs()
    poisoned = BaselineInputs(torch.where(MASK, padded.returns, torch.tensor(float("nan"))), MASK, R, 2, 0.5)
    for name in ("none", "mean", "group", "leave_one_out"):
        got = BASELINES[name](poisoned)
        assert torch.isfinite(got).all() and (got[~MASK] == 0).all(), name


def test_discounted_returns_count_only_action_positions():
    # γ = 0.5: in row 1 the reward sits two actions later at t = 0, one at t = 1.
    torch.testing.assert_close(inputs(gamma=0.5).returns[1], torch.tensor([0.75, 1.5, 3.0]))


@pytest.mark.parametrize("name", GROUPED)
def test_group_baselines_need_groups(name):
    with pytest.raises(ValueError, match="group_size >= 2"):
        BASELINES[name](inputs(group_size=1))
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        BASELINES[name](inputs(group_size=3))


def test_the_config_offers_exactly_the_table():
    # One table: the names REINFORCEConfig (and `textgym train --baseline`) accept are its keys.
    choices = typing.get_args(typing.get_type_hints(REINFORCEConfig)["baseline"])
    assert choices == tuple(BASELINES) and set(GROUPED) <= set(BASELINES)


# -- several turns: each turn's baseline averages the returns-to-go from that turn ---------------

# One prompt, G = 2. Episode 0: turns [0, 0, 1, 1], paid 0.5 at the end of turn 0 and 1 at the end
# of turn 1. Episode 1: one turn [0, 0] paid 0 and nothing more (its reply ended it).
MT_MASK = torch.tensor([[True, True, True, True], [True, True, False, False]])
MT_TURNS = torch.tensor([[0, 0, 1, 1], [0, 0, -1, -1]])
MT_REWARDS = torch.tensor([[0.0, 0.5, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])


def multi_turn(**kw):
    returns = discounted_returns(MT_REWARDS, MT_MASK, 1.0)  # [1.5, 1.5, 1, 1] and [0, 0]
    return BaselineInputs(returns, MT_MASK, MT_REWARDS.sum(1), group_size=2, turns=MT_TURNS, **kw)


@pytest.mark.parametrize(
    "name, advantages",
    [
        # turn 0: returns-to-go 1.5 and 0 (mean 0.75); turn 1: only episode 0 has one (1.0)
        ("group", [[0.75, 0.75, 0.0, 0.0], [-0.75, -0.75, 0.0, 0.0]]),
        # leave-one-out: the other episode's return from the same turn; none reached turn 1 but 0: b = 0
        ("leave_one_out", [[1.5, 1.5, 1.0, 1.0], [-1.5, -1.5, 0.0, 0.0]]),
        # the running mean per turn: m = (0.25, 2.0)
        ("mean", [[1.25, 1.25, -1.0, -1.0], [-0.25, -0.25, 0.0, 0.0]]),
    ],
)
def test_multi_turn_baselines_compare_each_turn_with_the_same_turn(name, advantages):
    got = BASELINES[name](multi_turn(running_mean=(0.25, 2.0)))
    torch.testing.assert_close(got, torch.tensor(advantages))


def test_one_turn_reduces_to_the_episode_returns():
    # turns given explicitly as all-zero are the single-turn case: the same advantages as without them
    for name in ("none", "mean", "group", "leave_one_out"):
        explicit = BaselineInputs(inputs().returns, MASK, R, group_size=2, running_mean=0.5, turns=torch.where(MASK, 0, -1))
        torch.testing.assert_close(BASELINES[name](explicit), BASELINES[name](inputs(running_mean=0.5)))
