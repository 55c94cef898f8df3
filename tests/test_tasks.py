"""Tasks: determinism, disjoint splits, verifiers accepting their own answers, the registry."""

import pickle
import re
import subprocess
import sys

import pytest

from textgym.rewards import score
from textgym.tasks import (
    Example, Task, evaluate_expression, list_task_families, list_tasks, make_task, register_task, register_task_family,
)

BUILTINS = ["addition", "multiplication", "comparison", "copy", "reverse", "sort", "counting",
            "countdown", "bandit"]


def test_builtins_registered():
    assert set(BUILTINS) <= set(list_tasks())


@pytest.mark.parametrize("name", BUILTINS)
def test_task_attributes(name):
    plain, r1 = make_task(name), make_task(name, prompt_style="r1_zero")
    assert plain.stop_strings == () and r1.stop_strings == ("</answer>",)
    assert plain.allowed_chars and r1.allowed_chars is None
    assert plain.description and "\n" not in plain.description
    ex = plain.example("train", 0)
    assert len(ex.answer) <= plain.max_answer_chars
    assert set(ex.answer) <= set(plain.allowed_chars)
    assert plain.format_prompt(ex).startswith(ex.prompt)
    assert r1.format_prompt(ex).endswith(f"User: {ex.prompt}\nAssistant: <think>")


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("split", Task.SPLITS)
def test_reference_answers_score_one(name, split):
    plain, r1 = make_task(name), make_task(name, prompt_style="r1_zero")
    for i in range(20):
        ex = plain.example(split, i)
        assert len(ex.answer) <= plain.max_answer_chars
        assert plain.reward(ex.answer, ex) == 1.0
        assert plain.reward(f"{ex.answer}\n", ex) == 1.0
        completion = f" I work it out. </think> <answer> {ex.answer} </answer>"
        assert r1.reward(completion, ex) == (1.0, {"format": 1.0, "answer": 1.0})
        assert score(r1.reward, completion, ex).reward == 1.0


@pytest.mark.parametrize("name", ["addition", "multiplication", "comparison", "counting", "countdown"])
def test_chatty_answers_score_one(name):
    task = make_task(name)
    ex = task.example("train", 1)
    assert task.reward(f"Let me see.\nThe answer is {ex.answer}", ex) == 1.0


@pytest.mark.parametrize("name", BUILTINS)
def test_wrong_answers_score_below_one(name):
    task = make_task(name)
    ex = task.example("train", 2)
    assert task.reward("", ex) == 0.0
    assert task.reward("zzz no", ex) < 1.0


def test_addition_default():
    task = make_task("addition")
    ex = task.example("train", 0)
    a, b = ex.metadata["a"], ex.metadata["b"]
    assert 0 <= a <= 9 and 0 <= b <= 9 and ex.prompt == f"What is {a} + {b}?"
    assert task.format_prompt(ex) == ex.prompt
    assert task.reward(f"{a} + {b} = {a + b}.", ex) == 1.0
    assert task.reward(f"{a + b} is wrong, it is {a + b + 1}", ex) == 0.0  # the last number counts
    assert sum(task.num_examples(s) for s in Task.SPLITS) == 100
    assert [task.num_examples(s) for s in Task.SPLITS] == [80, 10, 10]


@pytest.mark.parametrize("name, kwargs", [
    ("addition", {}), ("addition", {"digits": 3}), ("comparison", {}), ("copy", {}),
    ("countdown", {}), ("counting", {}), ("sort", {"length": 2, "alphabet": "abcdef"}),
])
def test_determinism(name, kwargs):
    a, b = make_task(name, seed=1, **kwargs), make_task(name, seed=1, **kwargs)
    other = make_task(name, seed=2, **kwargs)
    first = [a.example("train", i) for i in range(30)]
    assert first == [b.example("train", i) for i in range(30)]
    assert first == [a.example("train", i) for i in range(30)]  # no hidden state
    assert first != [other.example("train", i) for i in range(30)]


def test_same_examples_in_a_fresh_process():
    code = ("from textgym.tasks import make_task; t = make_task('countdown', seed=3); "
            "print([t.example(s, i).answer for s in t.SPLITS for i in range(5)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    task = make_task("countdown", seed=3)
    assert out.strip() == str([task.example(s, i).answer for s in task.SPLITS for i in range(5)])


@pytest.mark.parametrize("name, kwargs", [
    ("addition", {}), ("addition", {"digits": 3}), ("multiplication", {"digits": 2}),
    ("comparison", {"digits": 1}), ("copy", {"length": 3}), ("reverse", {"length": 2, "alphabet": "abc"}),
    ("sort", {}), ("counting", {"length": 4}), ("countdown", {}),
])
def test_splits_never_overlap(name, kwargs):
    keys = {}
    for seed in (0, 1):
        task = make_task(name, seed=seed, **kwargs)
        for split in Task.SPLITS:
            n = task.num_examples(split)
            for i in range(min(n, 300) if n is not None else 300):
                keys.setdefault(split, set()).add(task.problem_key(task.example(split, i)))
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_enumerated_split_wraps_and_covers():
    task = make_task("addition")
    n = task.num_examples("validation")
    examples = [task.example("validation", i) for i in range(n)]
    assert len({e.prompt for e in examples}) == n
    assert task.example("validation", n + 3) == examples[3]


def test_empty_split_and_bad_split():
    tiny = make_task("copy", length=1, alphabet="ab")  # 2 problems: nothing to hold out
    assert tiny.num_examples("train") == 2 and tiny.num_examples("test") == 0
    with pytest.raises(ValueError, match="split 'test' of task 'copy' is empty.*split='train'"):
        tiny.example("test", 0)
    with pytest.raises(ValueError, match="unknown split 'dev'.*validation"):
        make_task("addition").example("dev", 0)
    with pytest.raises(ValueError, match=">= 0"):
        make_task("addition").example("train", -1)


def test_unknown_task_and_bad_kwargs():
    with pytest.raises(ValueError, match="unknown task 'nope'; known tasks: addition"):
        make_task("nope")
    with pytest.raises(ValueError, match="prompt_style"):
        make_task("addition", prompt_style="chat")
    with pytest.raises(TypeError):
        make_task("addition", digitz=2)
    with pytest.raises(ValueError, match="digits"):
        make_task("addition", digits=0)
    with pytest.raises(ValueError, match="alphabet"):
        make_task("copy", alphabet="a a")


def test_task_families():
    made = []

    def family(member, **kwargs):
        made.append((member, kwargs))
        return Task.from_examples(f"toys:{member}", train=[("q", "a")])

    register_task_family("test_toys", family)
    register_task_family("test_toys", family)  # the same factory again: fine
    assert "test_toys" in list_task_families() and "reasoning_gym" in list_task_families()
    assert make_task("test_toys:x:y", seed=3).example("train", 0).answer == "a"
    assert made == [("x:y", {"seed": 3})]  # everything after the first ':' is the member
    with pytest.raises(ValueError, match="already registered"):
        register_task_family("test_toys", lambda member, **kw: None)
    with pytest.raises(ValueError, match="unknown task family 'nope' in 'nope:x'; task families: .*reasoning_gym"):
        make_task("nope:x")
    with pytest.raises(ValueError, match="must not contain ':'"):
        register_task("a:b", lambda **kw: None)
    with pytest.raises(ValueError, match="without ':'"):
        register_task_family("a:b", family)


def test_reward_override_and_replace():
    task = make_task("copy", reward="partial_credit")
    ex = task.example("train", 0)
    assert 0.0 < task.reward(ex.answer[:-1] + "#", ex) < 1.0
    r1 = make_task(make_task("addition"), prompt_style="r1_zero", seed=5)
    assert r1.prompt_style == "r1_zero" and r1.seed == 5
    with pytest.raises(TypeError, match="only seed, prompt_style and reward"):
        make_task(make_task("addition"), digits=3)


def test_tasks_pickle():
    task = make_task("countdown", prompt_style="r1_zero")
    ex = task.example("train", 0)
    clone = pickle.loads(pickle.dumps(task))
    assert clone.example("train", 0) == ex
    assert clone.reward(f"t </think> <answer>{ex.answer}</answer>", ex)[0] == 1.0


# -- individual tasks -------------------------------------------------------------------------------

def test_string_tasks():
    ex = make_task("reverse", length=4).example("train", 0)
    assert ex.answer == ex.metadata["text"][::-1] and ex.prompt == f"Reverse: {ex.metadata['text']}"
    ex = make_task("sort", alphabet="9876543210").example("train", 0)
    assert ex.answer == "".join(sorted(ex.metadata["text"], reverse=True))  # alphabet order
    varied = make_task("copy", length=6, min_length=2)
    assert {len(varied.example("train", i).answer) for i in range(200)} == {2, 3, 4, 5, 6}
    ex = make_task("counting").example("test", 0)
    assert ex.answer == str(ex.metadata["text"].count(ex.metadata["char"]))
    for name in ("copy", "reverse", "sort", "counting"):
        task = make_task(name)
        assert len(task.format_prompt(task.example("train", 0))) <= 30  # char-tokenizer friendly


def test_bandit():
    task = make_task("bandit", rewards={"A": 1.0, "B": 0.2, "C": 0.0})
    ex = task.example("test", 7)
    assert ex == task.example("train", 0) and task.num_examples("validation") == 1
    assert task.allowed_chars == "ABC" and task.max_answer_chars == 1 and ex.answer == "A"
    assert [task.reward(a, ex) for a in "ABCZ"] == [1.0, 0.2, 0.0, 0.0]
    assert make_task("bandit", rewards="X=0.5, Y=2").reward("Y", ex) == 0.0  # uses the example's table
    t2 = make_task("bandit", rewards="X=0.5, Y=2")
    assert t2.reward("Y", t2.example("train", 0)) == 2.0
    with pytest.raises(ValueError, match="single"):
        make_task("bandit", rewards={"AB": 1.0})
    with pytest.raises(ValueError, match="A=1"):
        make_task("bandit", rewards="A:1")


def test_countdown_reference_is_consistent():
    task = make_task("countdown", numbers=4, max_number=20)
    for i in range(50):
        ex = task.example("train", i)
        assert evaluate_expression(ex.answer, ex.metadata["numbers"]) == ex.metadata["target"]
        assert 1 <= ex.metadata["target"] <= 100


COUNTDOWN = Example("Using the numbers [3, 5, 7], make 22 ...", "(3 * 5) + 7", {"numbers": [3, 5, 7], "target": 22})


@pytest.mark.parametrize("completion, expected", [
    ("3*5+7", 1.0), ("(3 * 5) + 7 = 22", 1.0), ("Answer: 7 + 5 * 3", 1.0), ("5*3+7\n", 1.0),
    ("3*5+7+0", 0.0), ("3*5", 0.0), ("3*5+7*3", 0.0), ("7*3+1", 0.0), ("22", 0.0),
    ("__import__('os').system('echo pwned')", 0.0), ("2**99999999", 0.0), ("3**5**7", 0.0),
    ("(3+5)/(7-7)", 0.0), ("-3+5*7", 0.0), ("3.0*5+7", 0.0), ("(" * 300 + "3" + ")" * 300, 0.0),
    ("[3][0]*5+7", 0.0), ("", 0.0),
])
def test_countdown_verifier(completion, expected):
    task = make_task("countdown")
    assert task.reward(completion, COUNTDOWN) == expected


@pytest.mark.parametrize("expression, reason", [
    ("__import__('os')", "found Call"), ("2**99999", "found BinOp"), ("3+3", "used too often"),
    ("4", "not one of the given"), ("3/(5-5)", "division by zero"), ("3 +", "not an arithmetic"),
])
def test_evaluate_expression_refuses(expression, reason):
    with pytest.raises(ValueError, match=reason):
        evaluate_expression(expression, [3, 5, 5])


# -- custom tasks -----------------------------------------------------------------------------------

def test_from_examples_and_register():
    task = Task.from_examples(
        "capitals",
        train=[("Capital of France?", "Paris"), {"prompt": "Capital of Peru?", "answer": "Lima", "continent": "SA"}],
        validation=[Example("Capital of Chile?", "Santiago")],
        reward="exact_match",
    )
    assert task.num_examples("train") == 2 and task.num_examples("test") == 0
    assert {task.example("train", i).prompt for i in range(2)} == {"Capital of France?", "Capital of Peru?"}
    ex = task.example("validation", 5)
    assert task.reward(" Santiago ", ex) == 1.0 and task.reward("Lima", ex) == 0.0
    assert task.max_answer_chars == len("Santiago")
    with pytest.raises(ValueError, match="split 'test' of task 'capitals' has no examples; pass test="):
        task.example("test", 0)

    register_task("test_capitals", lambda **kw: task.replace(**kw))
    r1 = make_task("test_capitals", prompt_style="r1_zero")
    assert r1.reward("hmm </think> <answer>Santiago</answer>", ex) == (1.0, {"format": 1.0, "answer": 1.0})
    with pytest.raises(ValueError, match="already registered"):
        register_task("test_capitals", lambda **kw: task)


def test_register_task_class_decorator():
    @register_task("test_echo")
    class Echo(Task):
        name = "test_echo"
        description = "Say the number"

        def sample(self, rng):
            n = int(rng.integers(10**9))
            return Example(f"Say {n}", str(n))

    task = make_task("test_echo", seed=3)
    ex = task.example("validation", 4)
    assert task.reward(ex.answer, ex) == 1.0 and task.num_examples("train") is None
    assert register_task("test_echo", Echo) is Echo  # same factory again: fine


@pytest.mark.parametrize("name", BUILTINS)
def test_docstring_example_runs(name):
    cls = type(make_task(name))
    doc = cls.__doc__
    for section in ("## Description", "## Prompt", "## Answer", "## Rewards", "## Arguments", "## Example"):
        assert section in doc, f"{name} docstring lacks {section}"
    code = re.search(r"```python\n(.*?)```", doc, re.DOTALL).group(1)
    exec(compile("\n".join(line[4:] for line in code.splitlines()), f"<{name} docstring>", "exec"), {})


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("52", 1.0), ("52 is larger than 37.", 1.0), ("37 is smaller than 52", 1.0), ("52 > 37", 1.0),
        ("The larger number is 52.", 1.0), ("37 is less than 52, so 52 is bigger.", 1.0),
        ("37 is larger than 52.", 0.0),  # a false claim: its last number is the right one, the claim is not
        ("37", 0.0), ("I don't know", 0.0),
        ("The answer is 52.", 1.0), ("52. Yes, 52.", 1.0),  # one number named, as often as it likes
        # reward hacks seen in training runs: echoing the question, hedging between the two numbers
        ("37 or 52.", 0.0), ("The larger is 37 or 52.", 0.0), ("The larger is 52 or 37.", 0.0),
        ("37 or 52 is larger.", 0.0), ("To compare 37 and 52, look at the tens.", 0.0),
        ("The larger number is 52, not 37.", 1.0), ("Between 37 and 52, the larger is 52.", 1.0),
    ],
)
def test_comparison_reads_the_claim_not_the_last_number(completion, reward):
    task = make_task("comparison")
    assert task.reward(completion, Example("Which is larger: 37 or 52?", "52", {"a": 37, "b": 52})) == reward
