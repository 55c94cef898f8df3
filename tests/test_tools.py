"""Tools the way models are trained to call them: Python functions as JSON-schema tools, calls parsed in
the model family's format, results as tool turns rendered by the chat template, and every malformed
call a tool error turn — never an exception."""

import copy
import json
import re
import threading
import time
from typing import Literal, Optional

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import textgym
from textgym import Example, TextGenEnv, TextGenVectorEnv
from textgym.tasks import MultiTurnTask, Reply, ToolTask
from textgym.tools import HERMES_TEMPLATE, Tool, ToolSet, get_format, template_tool_format
from textgym.tools.formats import tag_calls

SMOL = "smollm2-135m-instruct"

# A chat template with a tool section and a tool role, in the Hermes/Qwen style, written here: the tools
# as JSON in the system turn, calls in <tool_call> tags, each tool result as a <tool_response> block of a
# user turn (consecutive results share one).
QWEN_STYLE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\nCall a function with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def smol():
    return textgym.as_tokenizer(SMOL)


@pytest.fixture(scope="module")
def qwen_style(smol):
    """A copy of SmolLM2's tokenizer with the tool template above."""
    tok = copy.deepcopy(smol)
    tok.hf.chat_template = QWEN_STYLE
    return tok


def play(env, turns, eos=True):
    """Write each text as one turn (encoded, plus the end token unless a stop string ends it)."""
    tok = env.unwrapped.tokenizer
    out = None
    for text in turns:
        for token in tok.encode(text) + ([tok.eos_token_id] if eos else []):
            out = env.step(token)
            if out[2] or out[3]:
                return out
    return out


def call(tool, /, **arguments):
    return f'<tool_call>{json.dumps({"name": tool, "arguments": arguments})}</tool_call>'


# -- Tool.from_function: the schema from the signature, type hints and docstring --------------------------


def lookup(key: str, limit: int = 3, mode: Literal["exact", "prefix"] = "exact", tags: Optional[list[str]] = None,
           state=None) -> str:  # fmt: skip
    """Look a key up in the store.

    Longer text that is not the summary.

    Args:
        key: the key, e.g. "blue/ant".
        limit: how many values
            to return at most.
        mode: how keys match.
    """
    return f"{key}:{limit}:{mode}:{tags}:{state}"


def test_a_function_becomes_a_tool_schema_the_template_takes():
    tool = Tool.from_function(lookup)
    assert tool.schema() == {"type": "function", "function": {
        "name": "lookup", "description": "Look a key up in the store.", "parameters": {
            "type": "object", "required": ["key"], "properties": {
                "key": {"type": "string", "description": 'the key, e.g. "blue/ant".'},
                "limit": {"type": "integer", "description": "how many values to return at most.", "default": 3},
                "mode": {"type": "string", "enum": ["exact", "prefix"], "description": "how keys match.", "default": "exact"},
                "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], "default": None}}}}}  # fmt: skip
    assert tool.takes_state and "state" not in tool.argument_names  # the episode's state, never shown to the model

    def sphinx(x: float, flag: bool) -> str:
        """Scale it.

        :param x: the number
        :param flag: whether to
        """

    params = Tool.from_function(sphinx).parameters
    assert params["properties"]["x"] == {"type": "number", "description": "the number"}
    assert params["properties"]["flag"] == {"type": "boolean", "description": "whether to"} and params["required"] == ["x", "flag"]


def test_a_parameter_without_a_json_type_is_refused_naming_it():
    def bad(when: threading.Event) -> str: ...

    with pytest.raises(TypeError, match=r"tool 'bad', parameter 'when'.*no JSON-schema equivalent"):
        Tool.from_function(bad)
    with pytest.raises(ValueError, match="two tools are named 'lookup'"):
        ToolSet([lookup, lookup])
    with pytest.raises(ValueError, match="tool name 'no spaces' must be"):
        Tool.from_function(lookup, name="no spaces")


def test_a_call_never_raises_every_failure_is_a_tool_error():
    def boom(x: int) -> str:
        """Fails."""
        raise KeyError(x)

    def refuse(x: int) -> str:
        """Refuses."""
        raise ValueError("x must be even")

    def slow(seconds: float) -> str:
        """Sleeps."""
        time.sleep(seconds)
        return "woke"

    tools = ToolSet([lookup, boom, refuse, slow], timeout=0.3)
    assert tools.call("lookup", {"key": "k"}, state="S").text == "k:3:exact:None:S"
    cases = [
        ("nope", {}, "error: there is no tool \"nope\"; the tools are: lookup, boom, refuse, slow"),
        (None, {}, "error: there is no tool null; the tools are: lookup, boom, refuse, slow"),
        ("lookup", {}, "error: lookup needs the argument 'key'"),
        ("lookup", {"key": "k", "colour": 1}, "error: lookup has no argument 'colour'; its arguments are: key, limit, mode, tags"),
        ("lookup", {"key": 5}, "error: argument 'key' of lookup must be a JSON string, got 5"),
        ("lookup", {"key": "k", "mode": "fuzzy"}, 'error: argument \'mode\' of lookup must be one of "exact", "prefix", got "fuzzy"'),
        ("lookup", {"key": "k", "limit": True}, "error: argument 'limit' of lookup must be a JSON integer, got true"),
        ("lookup", ["k"], 'error: the arguments of lookup must be a JSON object, got ["k"]'),
        ("boom", {"x": 1}, "error: boom raised KeyError: 1"),
        ("refuse", {"x": 1}, "error: x must be even"),  # a ValueError is the tool's own refusal, said as is
        ("slow", {"seconds": 5}, "error: slow timed out after 0.3 s"),
    ]
    for name, arguments, text in cases:
        result = tools.call(name, arguments)
        assert (result.text, result.ok) == (text, False), (name, arguments)
    assert tools.call("slow", {"seconds": 0}).text == "woke"


# -- reading calls: the Hermes/Qwen format and the tags ---------------------------------------------------


def test_hermes_calls_are_read_and_malformed_ones_become_errors():
    hermes, tools = get_format("hermes"), ToolSet([lookup])
    assert hermes.parse("The answer is 4.", tools) is None  # no call: the final answer
    assert hermes.parse("<tool_call>{unclosed", tools) is None
    [c] = hermes.parse('Let me look.\n<tool_call>\n{"name": "lookup", "arguments": {"key": "a/b"}}\n</tool_call>', tools)
    assert (c.name, c.arguments, c.error) == ("lookup", {"key": "a/b"}, None)
    [c] = hermes.parse('<tool_call>{"name": "lookup", "arguments": "{\\"key\\": \\"x\\"}"}</tool_call>', tools)
    assert c.arguments == {"key": "x"}  # arguments written as a JSON string
    first, second = hermes.parse(call("lookup", key="a") + call("lookup", key="b"), tools)
    assert (first.arguments, second.arguments) == ({"key": "a"}, {"key": "b"})
    errors = {
        "<tool_call>{'name': 'lookup'}</tool_call>": r"not valid JSON \(Expecting property name .* at character 1\)",
        "<tool_call>[1, 2]</tool_call>": 'a JSON object with a "name"',
        '<tool_call>{"arguments": {}}</tool_call>': 'a JSON object with a "name"',
        '<tool_call>{"name": "lookup", "arguments": "k"}</tool_call>': "arguments of lookup are not a JSON object",
        "<tool_call>" + "[" * 100_000 + "</tool_call>": r"cannot be read \(RecursionError\)",
        "<tool_call>" + "9" * 5000 + "</tool_call>": r"cannot be read \(ValueError\)",
        "done </tool_call>": "no <tool_call> before </tool_call>",
    }
    for text, pattern in errors.items():
        [c] = hermes.parse(text, tools)
        assert c.name is None or c.error, text
        assert re.search(pattern, c.error) and c.error.startswith("error: "), (text, c.error)
    assert hermes.stop_strings(tools) == ("</tool_call>",)


def test_tags_read_each_tool_and_convert_its_one_argument():
    def square(n: int) -> int:
        """Square it."""
        return n * n

    def pair(a: str, b: str) -> str:
        """Join two."""
        return a + b

    tags, tools = get_format("tags"), ToolSet([square, pair, lookup])
    calls = tags.parse('<square> 12 </square> and <pair>{"a": "x", "b": "y"}</pair>', tools)
    assert [(c.name, c.arguments) for c in calls] == [("square", {"n": 12}), ("pair", {"a": "x", "b": "y"})]
    [c] = tags.parse("<square>twelve</square>", tools)
    assert c.error == "error: square takes an integer, got 'twelve'"
    [c] = tags.parse("<pair>x, y</pair>", tools)
    assert c.error.startswith("error: pair takes several arguments: write them as a JSON object")
    assert tags.parse("just 144", tools) is None
    assert tags.stop_strings(tools) == ("</square>", "</pair>", "</lookup>")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["<a>", "</a>", "<b>", "</b>", "<a", "b>", "x", "\n"]), max_size=16).map("".join))
def test_tag_calls_find_what_a_lazy_pattern_finds_per_tag(text):
    spans = tag_calls(text, ("a", "b"))
    expected = sorted((m.start(), m.group(1), m.group(2)) for m in re.finditer(r"<(a|b)>(.*?)</\1>", text, re.S))
    # Left to right, each call closing at its own tag: what the pattern finds when calls do not overlap.
    if all(e1[0] + len(e1[2]) + 7 <= e2[0] for e1, e2 in zip(expected, expected[1:])):
        assert spans == [(name, inner) for _, name, inner in expected]


@pytest.mark.parametrize("text", ["<tool_call>" * 40_000, "<tool_call>{" + "1" * 200_000, "</tool_call>" * 30_000,
                                  "<a><b>" * 30_000 + "</b>"])  # fmt: skip
def test_a_200k_character_turn_is_read_in_linear_time(text):
    tools = ToolSet([Tool.from_function(lookup, name="a"), Tool.from_function(lookup, name="b")])
    began = time.perf_counter()
    for name in ("hermes", "tags"):
        get_format(name).parse(text, tools)
    assert time.perf_counter() - began < 2.0


# -- native tool calls through the env: the template renders the tools and the tool turns ----------------


def test_native_tool_calls_render_in_the_template_and_keep_the_sampled_tokens(qwen_style):
    assert template_tool_format(qwen_style) == "hermes"
    env = TextGenEnv(task="kvstore", tokenizer=qwen_style, max_new_tokens=160, check_chat_template="always")
    task = env.unwrapped.task
    assert task.native and task.format_name == "hermes" and task.stop_strings == ("</tool_call>",)
    obs, _ = env.reset(seed=0)
    prompt = env.unwrapped.core.text(0)
    assert prompt.startswith("<|im_start|>system\nExample:\nUser: What is the value of red/fox?\nAssistant: <tool_call>")
    assert '\n{"type": "function", "function": {"name": "get", "description": "Get the value stored under a key."' in prompt
    example = env.unwrapped.example
    key, value = example.metadata["key"], example.answer
    turn = call("get", key=key)
    _, reward, terminated, truncated, _ = play(env, [turn], eos=False)  # the stop string ends the turn
    text = env.unwrapped.core.text(0)
    assert not (terminated or truncated) and reward == 0.0
    assert text.endswith(f"{turn}<|im_end|>\n<|im_start|>user\n<tool_response>\n{value}\n</tool_response><|im_end|>\n"
                         "<|im_start|>assistant\n")  # fmt: skip
    ids = env.unwrapped.core.ids[0, : env.unwrapped.core.seq_len[0]].tolist()
    p = int(obs["seq_len"][0])
    assert ids[p : p + len(qwen_style.encode(turn))] == qwen_style.encode(turn)  # the sampled tokens, as sampled
    _, reward, terminated, _, info = play(env, [f"The value is {value}."])
    assert terminated and reward == 1.0 and info["reward_components"] == {"answer": 1.0, "calls": 1.0}
    assert [s["role"] for s in info["conversation"]] == ["prompt", "assistant", "tool", "assistant"]


def test_malformed_native_calls_get_tool_error_turns_and_the_episode_goes_on(qwen_style):
    env = TextGenEnv(task="kvstore", tokenizer=qwen_style, max_new_tokens=400, task_kwargs={"max_turns": 6},
                     check_chat_template="always")  # fmt: skip
    env.reset(seed=3)
    key = env.unwrapped.example.metadata["key"]
    turns = {
        "<tool_call>{'name': 'get'}</tool_call>": "error: the tool call is not valid JSON",
        call("delete", key=key): 'error: there is no tool "delete"; the tools are: get, list_keys',
        call("get", name=key): "error: get has no argument 'name'; its arguments are: key",
        call("get", key="no/such"): "error: no key 'no/such' in the store; list_keys shows the keys",
        call("list_keys", prefix=key.split("/")[0] + "/"): key,
    }
    for turn, expected in turns.items():
        _, reward, terminated, truncated, info = play(env, [turn], eos=False)
        assert not (terminated or truncated), info
        last = env.unwrapped.core.messages[0][-1]
        assert last["role"] == "tool" and last["content"].startswith(expected)
    _, _, terminated, _, info = play(env, ["I do not know."])
    assert terminated and info["reward_components"] == {"answer": 0.0, "calls": 5.0} and "reply_error" not in info


def test_several_calls_in_one_turn_get_one_tool_turn_each_grouped_by_the_template(qwen_style):
    env = TextGenEnv(task="kvstore", tokenizer=qwen_style, max_new_tokens=200, stop_strings=["<end>"],
                     check_chat_template="always")  # fmt: skip
    env.reset(seed=1)
    store = env.unwrapped.example.metadata["store"]
    a, b = list(store)[:2]
    play(env, [call("get", key=a) + call("get", key=b)])
    assert env.unwrapped.core.text(0).endswith(
        f"<|im_start|>user\n<tool_response>\n{store[a]}\n</tool_response>\n<tool_response>\n{store[b]}\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n")  # fmt: skip
    env.unwrapped.core.check_conversation(0)


def test_the_built_in_hermes_template_gives_smollm2_native_tools(smol):
    env = TextGenEnv(task="calculator", tokenizer=SMOL, jinja_template="hermes", max_new_tokens=120)
    assert env.unwrapped.task.native and env.tokenizer.chat_template == HERMES_TEMPLATE
    assert smol.chat_template is None, "the shared tokenizer keeps its own template"
    env.reset(seed=0)
    a, b = env.unwrapped.example.metadata["a"], env.unwrapped.example.metadata["b"]
    prompt = env.unwrapped.core.text(0)
    assert "<tools>\n" in prompt and '"name": "calc"' in prompt
    assert prompt.endswith("You can use the calc tool. Then answer with the number.<|im_end|>\n<|im_start|>assistant\n")
    play(env, [call("calc", expression=f"{a}*{b}")], eos=False)
    assert env.unwrapped.core.messages[0][-1] == {"role": "tool", "content": str(a * b)}
    _, reward, terminated, _, _ = play(env, [str(a * b)])
    assert terminated and reward == 1.0
    env.unwrapped.core.check_conversation(0)


def test_jinja_template_from_a_file_and_clear_errors(tmp_path, qwen_style):
    path = tmp_path / "tools.jinja"
    path.write_text(QWEN_STYLE)
    env = TextGenEnv(task="kvstore", tokenizer=SMOL, jinja_template=str(path), max_new_tokens=64)
    assert env.unwrapped.task.native
    with pytest.raises(ValueError, match=r"jinja_template='nope.jinja' is neither a built-in template \(hermes\) nor a file"):
        TextGenEnv(task="kvstore", tokenizer=SMOL, jinja_template="nope.jinja")
    with pytest.raises(ValueError, match=r"jinja_template='hermes': tokenizer 'char' cannot take a chat template"):
        TextGenEnv(task="kvstore", tokenizer="char", jinja_template="hermes")


def test_a_template_that_rewrites_earlier_tool_turns_is_refused_clearly(qwen_style):
    """Prefix-preservation with tool turns: a template that shows only the latest tool result in full
    (earlier ones shortened) changes tokens already in the episode; the probe refuses it."""
    forgetful = QWEN_STYLE.replace("{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}",
                                   "{{- '\\n<tool_response>\\n' + (message.content if loop.revindex0 < 2 else '...') + "
                                   "'\\n</tool_response>' }}")  # fmt: skip
    assert forgetful != QWEN_STYLE
    tok = qwen_style.with_chat_template(forgetful)
    with pytest.raises(ValueError, match=r"not prefix-preserving for this conversation: from token \d+"):
        TextGenEnv(task="kvstore", tokenizer=tok, max_new_tokens=200)  # found by the probe, when the env is made
    TextGenEnv(task="kvstore", tokenizer=qwen_style, max_new_tokens=200)  # the original passes


# -- SmolLM2's own template (no tool section): the tools are described in the system prompt -------------


def test_smollm2_plain_template_describes_tools_and_reads_tool_call_tags(smol):
    assert template_tool_format(smol) is None
    env = TextGenEnv(task="kvstore", task_kwargs={"tool_format": "hermes"}, tokenizer=SMOL, max_new_tokens=120)
    task = env.unwrapped.task
    assert not task.native and task.format_name == "hermes" and task.tool_schemas is None
    env.reset(seed=0)
    prompt = env.unwrapped.core.text(0)
    assert prompt.startswith("<|im_start|>system\nYou can call tools. They are described by JSON schemas inside <tools></tools>:")
    assert 'Assistant: <tool_call>{"name": "get", "arguments": {"key": "red/fox"}}</tool_call>\nTool: 17' in prompt
    key, value = env.unwrapped.example.metadata["key"], env.unwrapped.example.answer
    play(env, [call("get", key=key)], eos=False)
    tool_turn = f"</tool_call><|im_end|>\n<|im_start|>tool\n{value}<|im_end|>\n<|im_start|>assistant\n"  # SmolLM2's tool role
    assert env.unwrapped.core.text(0).endswith(tool_turn)
    _, reward, terminated, _, _ = play(env, [value])
    assert terminated and reward == 1.0
    env.unwrapped.core.check_conversation(0)


def test_smollm2_default_stays_tags_and_the_calculator_prompt_is_unchanged(smol):
    env = TextGenEnv(task="calculator", tokenizer=SMOL, max_new_tokens=64)
    assert env.unwrapped.task.format_name == "tags" and not env.unwrapped.task.native
    env.reset(seed=0)
    a, b = env.unwrapped.example.metadata["a"], env.unwrapped.example.metadata["b"]
    assert env.unwrapped.core.text(0) == (  # word for word the prompt of the README's calculator results
        "<|im_start|>system\nYou can use a calculator. To use it, reply with only <calc>expression</calc>; the result "
        "comes back to you. Example:\nUser: What is 12 * 34?\nAssistant: <calc>12*34</calc>\nTool: 408\nAssistant: 408"
        f"<|im_end|>\n<|im_start|>user\nWhat is {a} * {b}? You can use a calculator: write <calc>expression</calc> and "
        "you get the result. Then answer with the number.<|im_end|>\n<|im_start|>assistant\n"
    )
    kv = TextGenEnv(task="kvstore", tokenizer=SMOL, max_new_tokens=64)
    kv.reset(seed=0)
    key, value = kv.unwrapped.example.metadata["key"], kv.unwrapped.example.answer
    play(kv, [f"<get>{key}</get>"], eos=False)
    assert kv.unwrapped.core.text(0).endswith(f"<get>{key}</get><|im_end|>\n<|im_start|>tool\n{value}<|im_end|>\n"
                                              "<|im_start|>assistant\n")  # fmt: skip


# -- kvstore: a tool with per-episode state ---------------------------------------------------------------


def test_kvstore_tools_read_each_episodes_own_store():
    envs = TextGenVectorEnv(num_envs=2, task="kvstore", tokenizer="char", max_new_tokens=60)
    envs.reset(seed=0)
    examples = envs.unwrapped.examples
    assert examples[0].metadata["store"] != examples[1].metadata["store"]
    tok = envs.unwrapped.tokenizer
    turns = [tok.encode(f"<get>{ex.metadata['key']}</get>") for ex in examples]
    for t in range(max(map(len, turns))):
        envs.step(np.array([turn[min(t, len(turn) - 1)] for turn in turns]))
    replies = [envs.unwrapped.core.messages[i][-1]["content"] for i in range(2)]
    assert replies == [ex.answer for ex in examples]


def test_kvstore_problems_rewards_and_splits():
    task = textgym.make_task("kvstore", lookup="prefix", call_credit=0.1)
    seen = {s: {task._hash_key(task.example(s, i)) for i in range(30)} for s in task.SPLITS}
    assert not (seen["train"] & seen["validation"]) and not (seen["train"] & seen["test"])
    ex = task.example("validation", 4)
    colour = ex.metadata["key"].split("/")[0]
    assert ex.prompt.endswith(f"the key that starts with {colour}/?")
    assert sum(k.startswith(colour + "/") for k in ex.metadata["store"]) == 1
    state = task.start(ex)
    assert task.reply(f"<list_keys>{colour}/</list_keys>", ex, state).text == ex.metadata["key"]
    assert task.reply(f"<get>{ex.metadata['key']}</get>", ex, state).reward == 0.1  # the right lookup, once
    assert task.reply(f"<get>{ex.metadata['key']}</get>", ex, state).reward == 0.0
    final = task.reply(f"It is {ex.answer}.", ex, state)
    assert final.done and final.reward == 1.0 and final.components == {"answer": 1.0, "calls": 3.0}
    assert task.answer_of("x", {"conversation": [{"role": "assistant", "text": f"It is {ex.answer}."}]}) == ex.answer
    assert "kvstore" in textgym.list_tasks()
    with pytest.raises(ValueError, match="lookup must be one of 'key', 'prefix'"):
        textgym.make_task("kvstore", lookup="value")


def test_tool_task_wraps_any_single_turn_task():
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    task = ToolTask([add], task="addition", task_kwargs={"digits": 2})
    ex = task.example("train", 0)
    state = task.start(ex)
    a, b = map(int, re.findall(r"\d+", ex.prompt)[:2])
    assert task.reply(f'<add>{{"a": {a}, "b": {b}}}</add>', ex, state).text == str(a + b)
    assert task.reply(str(a + b), ex, state).reward == 1.0
    with pytest.raises(ValueError, match="tool_format must be one of 'auto', 'hermes', 'tags'"):
        ToolTask([add], task="addition", tool_format="json")


# -- episodes end once, however they end: the task's `end` hook (what releases server sessions) ---------


class Counting(MultiTurnTask):
    """Counts `start` and `end`; replies "again" until the policy writes "stop"."""

    name = "counting_ends"
    max_turns = 2

    def __init__(self):
        super().__init__()
        self.started, self.ended = [], []

    def all_problems(self):
        return [Example("Say stop.", "stop")]

    def start(self, example):
        self.started.append(len(self.started))
        return {"id": self.started[-1]}

    def end(self, example, state):
        assert state is not None
        self.ended.append(state["id"])

    def reply(self, text, example, state):
        return Reply(reward=1.0, done=True) if "stop" in text else Reply("again")


def test_every_episode_ends_once_however_it_ends():
    task = Counting()
    env = TextGenEnv(task=task, tokenizer="char", max_new_tokens=30, max_prompt_tokens=12)
    probes = len(task.started)
    assert task.ended == task.started, "the env's own probes end what they start"
    for how in (["stop"], ["go", "go"], ["x" * 40]):  # done, out of turns, out of budget
        env.reset(seed=0)
        play(env, how)
        assert task.ended == task.started
    env.reset(seed=0)
    play(env, ["go"])
    env.reset(seed=1)  # abandoned mid-episode: ended when the slot restarts
    assert task.ended == task.started[:-1]
    env.close()  # and the one still running when the env closes
    assert task.ended == task.started and len(task.started) == probes + 5


# -- whatever the policy writes: no exception, every reply a tool turn ------------------------------------

NATIVE_PIECES = ["<tool_call>", "</tool_call>", '{"name": "get"', '{"name": "list_keys"', '{"name": "nope"', ', "arguments": ',
                 '{"key": "', '{"prefix": "', "red/fox", '"}}', '"}', "}", "[", "{", '"', "9" * 30, "null", " ", "\n"]  # fmt: skip


@pytest.fixture(scope="module")
def native_env():
    return TextGenEnv(task="kvstore", tokenizer=SMOL, jinja_template="hermes", max_new_tokens=200, check_chat_template="always")


@settings(max_examples=30, deadline=None)
@given(turns=st.lists(st.lists(st.sampled_from(NATIVE_PIECES), max_size=10).map("".join), min_size=1, max_size=4))
def test_any_tool_call_text_through_the_native_env(native_env, turns):
    native_env.reset(seed=0)
    out = play(native_env, [*turns, "42", "42", "42", "42"])  # up to 4 turns: the episode ends by then
    _, reward, terminated, truncated, info = out
    assert terminated or truncated
    assert isinstance(reward, float) and "reply_error" not in info and "reward_error" not in info, info


def test_tool_state_comes_back_from_a_worker_process():
    env = TextGenEnv(task="kvstore", tokenizer="char", max_new_tokens=80, reward_isolation="process")
    env.reset(seed=2)
    key, value = env.unwrapped.example.metadata["key"], env.unwrapped.example.answer
    play(env, [f"<list_keys>{key[:2]}</list_keys>", f"<get>{key}</get>"], eos=False)
    assert env.unwrapped.core.messages[0][-1]["content"] == value and env.unwrapped.core.states[0]["calls"] == 2
    _, reward, terminated, _, info = play(env, [value])
    assert terminated and reward == 1.0 and info["reward_components"]["calls"] == 2.0
