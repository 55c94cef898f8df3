"""agents.rollouts: per-episode records, one verifier call per episode, the update's tensors, evaluation.

- `collect_episodes` asks the verifier exactly once per episode, whatever autoreset mode the env
  was made in, and restores that mode;
- an episode's record is complete (tokens, action positions, behaviour log-probs, step rewards, the
  final info), and `to_batch` puts each action's log-prob and reward in the column that scores it:
  recomputing the log-probs there gives the behaviour log-probs back;
- in a multi-turn env that writes its own tokens after a policy turn, those tokens stay in the
  sequence but never count as actions, and rewards paid per turn give reward-to-go over the actions;
- `evaluate` / `sample_episodes`: the same seed gives the same prompts on a vector and a single env,
  and the same samples; the policy's sampling stream is left alone.
"""

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import textgym
from agents.losses import discounted_returns
from agents.policy import LMPolicy
from agents.rollouts import Episode, collect_episodes, evaluate, sample_episodes, summarize, to_batch


TASK = dict(task="copy", task_kwargs={"length": 2, "alphabet": "abc"}, max_new_tokens=4)


@pytest.fixture(scope="module")
def policy():
    return LMPolicy.from_pretrained("tiny", seed=0)


@pytest.fixture(scope="module")
def restricted():
    """Samples only a, b, c and the end token, so episodes end at different steps."""
    policy = LMPolicy.from_pretrained("tiny", seed=0)
    policy.restrict_actions(textgym.TextGenEnv(tokenizer=policy.tokenizer, **TASK).action_masks())
    return policy


class CountingReward:
    """A verifier that counts its calls (thread isolation: the calls happen in this process)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, completion, example):
        self.calls += 1
        return float(completion.startswith(example.answer))


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_every_episode_costs_exactly_one_verifier_call_in_any_mode(restricted, mode):
    policy = restricted
    reward = CountingReward()
    envs = textgym.TextGenVectorEnv(num_envs=6, group_size=3, autoreset_mode=mode, tokenizer=policy.tokenizer, reward=reward, **TASK)
    policy.seed(0)
    episodes, timing = collect_episodes(policy, envs, seed=0)
    assert len(episodes) == 6 and reward.calls == 6
    assert len({len(e.action_positions) for e in episodes}) > 1, "want slots that finish at different steps"
    assert envs.autoreset_mode == mode
    assert timing["generate_s"] > 0 and timing["env_s"] > 0
    # The env is usable in its own mode afterwards.
    obs, _ = envs.reset(seed=1)
    envs.step(np.zeros(6, dtype=np.int64))


def test_an_episode_record_is_complete_and_the_batch_aligns_with_the_policy(restricted):
    policy = restricted
    envs = textgym.TextGenVectorEnv(num_envs=4, group_size=2, tokenizer=policy.tokenizer, **TASK)
    policy.seed(1)
    episodes, _ = collect_episodes(policy, envs, seed=3)
    for slot, e in enumerate(episodes):
        assert isinstance(e, Episode) and e.slot == slot
        n = len(e.action_positions)
        np.testing.assert_array_equal(e.action_positions, np.arange(e.prompt_len, e.prompt_len + n))
        np.testing.assert_array_equal(e.token_ids[e.prompt_len :], e.actions)  # single turn: prompt + actions
        assert e.log_probs.shape == e.rewards.shape == (n,) and (e.log_probs <= 0).all()
        assert (e.rewards[:-1] == 0).all() and e.reward == e.rewards[-1]
        info = e.info
        assert {"completion", "answer", "ended_by", "episode_length", "reward_components", "reward_error", "index"} <= set(info)
        assert info["episode_length"] == n and info["ended_by"] in ("eos", "stop", "budget")
        assert info["reward_error"] is None and isinstance(info["index"], int)
        assert policy.tokenizer.decode(e.prompt_ids.tolist()).endswith(envs.task.format_prompt(envs.examples[slot])[-3:])
    assert episodes[0].info["index"] == episodes[1].info["index"]  # a group shares its prompt

    batch = to_batch(episodes, group_size=2)
    assert batch.group_size == 2 and len(batch) == 4
    with torch.no_grad():
        recomputed = policy.log_probs(batch.input_ids, batch.attention_mask)["log_probs"]
    mask = batch.action_mask
    assert int(mask.sum()) == sum(len(e.action_positions) for e in episodes)
    torch.testing.assert_close(recomputed[mask], batch.old_log_probs[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batch.episode_returns, torch.tensor([e.reward for e in episodes]))
    torch.testing.assert_close(batch.rewards.sum(1), batch.episode_returns)


class TwoTurnEnv:
    """A minimal vector env with the TextGen observation that writes its own two tokens after every
    second action (a "reply"), pays 1 for each finished turn, and ends after three turns.
    Finished slots ignore their actions (as DISABLED does); `finishes` counts episode ends."""

    PROMPT, REPLY = [3, 4, 5], [7, 8]

    def __init__(self, n, vocab):
        self.num_envs, self.vocab = n, vocab
        self.autoreset_mode = AutoresetMode.NEXT_STEP
        self.unwrapped = self
        self.finishes = 0

    def reset(self, seed=None, options=None):
        self.ids = [list(self.PROMPT) for _ in range(self.num_envs)]
        self.actions = [0] * self.num_envs
        self.done = np.zeros(self.num_envs, dtype=bool)
        return self.obs(), {}

    def obs(self):
        width = 16
        ids = np.full((self.num_envs, width), self.vocab, dtype=np.int64)
        for i, row in enumerate(self.ids):
            ids[i, : len(row)] = row
        lengths = np.array([[len(r)] for r in self.ids])
        return {"input_ids": ids, "attention_mask": (ids != self.vocab).astype(np.int8),
                "prompt_len": np.full((self.num_envs, 1), len(self.PROMPT)), "seq_len": lengths}  # fmt: skip

    def step(self, actions):
        assert self.autoreset_mode == AutoresetMode.DISABLED
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        info = {"completion": np.full(self.num_envs, None, dtype=object), "_completion": np.zeros(self.num_envs, dtype=bool)}
        for i in np.flatnonzero(~self.done):
            self.ids[i].append(int(actions[i]))
            self.actions[i] += 1
            if self.actions[i] % 2 == 0:  # a turn ends: pay it, then reply unless it was the last
                rewards[i] = 1.0
                if self.actions[i] == 6:
                    terminated[i] = self.done[i] = True
                    self.finishes += 1
                    info["completion"][i], info["_completion"][i] = "done", True
                else:
                    self.ids[i] += self.REPLY
        return self.obs(), rewards, terminated, np.zeros(self.num_envs, dtype=bool), info


def test_env_tokens_stay_in_the_sequence_but_are_never_actions(policy):
    envs = TwoTurnEnv(3, policy.vocab_size)
    episodes, _ = collect_episodes(policy, envs, seed=0)
    assert envs.finishes == 3 and envs.autoreset_mode == AutoresetMode.NEXT_STEP
    for e in episodes:
        np.testing.assert_array_equal(e.action_positions, [3, 4, 7, 8, 11, 12])  # where each action was written
        np.testing.assert_array_equal(e.token_ids[5:7], TwoTurnEnv.REPLY)
        np.testing.assert_array_equal(e.token_ids[9:11], TwoTurnEnv.REPLY)
        assert len(e.token_ids) == 13 and e.reward == 3.0 and e.info == {"completion": "done", "reward_error": None}
        np.testing.assert_array_equal(e.rewards, [0, 1, 0, 1, 0, 1])

    batch = to_batch(episodes)
    columns = np.flatnonzero(batch.action_mask[0].numpy())
    np.testing.assert_array_equal(columns, [2, 3, 6, 7, 10, 11])  # column p-1 scores position p
    with torch.no_grad():
        recomputed = policy.log_probs(batch.input_ids, batch.attention_mask)["log_probs"]
    torch.testing.assert_close(recomputed[batch.action_mask], batch.old_log_probs[batch.action_mask], atol=1e-4, rtol=1e-4)
    # Reward-to-go over the actions only (the reply tokens between them do not discount), γ = 0.5.
    returns = discounted_returns(batch.rewards, batch.action_mask, gamma=0.5)[0, columns]
    torch.testing.assert_close(returns, torch.tensor([0.65625, 1.3125, 0.625, 1.25, 0.5, 1.0]))


def test_same_seed_same_prompts_on_a_vector_and_a_single_env_and_the_stream_is_untouched(policy):
    vector = textgym.TextGenVectorEnv(num_envs=4, split="validation", tokenizer=policy.tokenizer, **TASK)
    single = textgym.TextGenEnv(split="validation", tokenizer=policy.tokenizer, **TASK)
    state = policy.generator.get_state()
    a = sample_episodes(policy, vector, 6, seed=7)
    b = sample_episodes(policy, single, 6, seed=7)
    assert [e.info["index"] for e in a] == [e.info["index"] for e in b]  # episode k: reset(seed=7 + k)
    assert torch.equal(policy.generator.get_state(), state)
    again = sample_episodes(policy, vector, 6, seed=7)
    assert [e.token_ids.tolist() for e in again] == [e.token_ids.tolist() for e in a]  # same samples too
    greedy = evaluate(policy, single, 3, greedy=True, seed=2)
    assert evaluate(policy, single, 3, greedy=True, seed=2) == greedy and greedy["episodes"] == 3
    with pytest.raises(ValueError, match="episodes must be a positive integer"):
        sample_episodes(policy, vector, 0)


def test_summarize_counts_reward_errors_and_components():
    def ep(reward, **info):
        return Episode(np.arange(4), 2, np.array([2, 3]), np.zeros(2, np.float32), np.array([0.0, reward]), info)

    episodes = [ep(1.0, reward_components={"answer": 1.0}, reward_error=None), ep(0.5, reward_components={"format": 1.0}, reward_error="boom"),
                ep(0.0, reward_error=None)]  # fmt: skip
    s = summarize(episodes)
    assert s["reward"] == pytest.approx(0.5) and s["accuracy"] == pytest.approx(1 / 3)
    assert s["reward_errors"] == 1 and s["episode_length"] == 2 and s["episodes"] == 3
    assert s["reward/answer"] == pytest.approx(1 / 3) and s["reward/format"] == pytest.approx(1 / 3)


def test_reply_errors_are_counted_in_the_training_metrics():
    from agents.reinforce import _iteration_metrics

    def ep(**info):
        return Episode(np.arange(4), 2, np.array([2, 3]), np.zeros(2, np.float32), np.zeros(2), {"completion": "x", **info})

    episodes = [ep(reply_error="task 'x': reply() raised ValueError: no"), ep(reward_error=None), ep()]
    assert summarize(episodes)["reply_errors"] == 1
    row = _iteration_metrics(1, episodes, {}, 1e-5, {"generate_s": 0.0, "env_s": 0.0}, 1.0, 1.0)
    assert row["reply_errors"] == 1 and row["reward_errors"] == 0


class ReencodingEnv(TwoTurnEnv):
    """Breaks the rule: rewrites the policy's last token when it replies (as re-tokenizing text would)."""

    def step(self, actions):
        out = super().step(actions)
        for row in self.ids:
            if len(row) > 5:
                row[4] = 9
        return self.obs(), *out[1:]


def test_an_env_that_rewrites_the_policys_tokens_is_caught(policy):
    policy.seed(0)
    with pytest.raises(RuntimeError, match="does not hold the tokens the policy chose"):
        collect_episodes(policy, ReencodingEnv(2, policy.vocab_size), seed=0)
