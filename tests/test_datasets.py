"""Tasks from data files and Hugging Face datasets: formats, fields, splits, and every bad input."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import textgym
from textgym.rewards import score
from textgym.tasks import Task, from_file, from_hub, make_task

ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("CI"):  # CI installs the `data` extra: a missing package must fail there, not skip
    import datasets
    import pyarrow
else:
    datasets = pytest.importorskip("datasets")
    pyarrow = pytest.importorskip("pyarrow")

GSM8K_ROWS = [{"question": f"Tom has {i} apples and buys {i + 1000} more. How many now?",
               "answer": f"{i} + {i + 1000} = {2 * i + 1000}\n#### {2 * i + 1000:,}", "id": i} for i in range(200)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, rows, delimiter=","):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def all_examples(task):
    return {s: [task.example(s, i) for i in range(task.num_examples(s))] for s in Task.SPLITS}


def test_jsonl_gsm8k_divided_by_hash(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    task = from_file(path, prompt_field="question", answer_field="answer", answer_extract="gsm8k", reward="gsm8k")
    splits = all_examples(task)
    assert sum(map(len, splits.values())) == 200 and all(splits.values())
    assert len(splits["train"]) > 3 * len(splits["test"])
    prompts = {s: {e.prompt for e in exs} for s, exs in splits.items()}
    assert not (prompts["train"] & prompts["test"]) and not (prompts["train"] & prompts["validation"])
    ex = next(e for exs in splits.values() for e in exs if e.metadata["id"] == 7)
    assert ex.answer == "1014"  # the number after ####, commas dropped
    assert ex.metadata == {"id": 7, "answer": GSM8K_ROWS[7]["answer"]}  # other fields + the raw answer
    assert task.reward("7 + 1007 = 1014\n#### 1,014", ex) == 1.0 and task.reward("#### 1013", ex) == 0.0
    again = from_file(path, prompt_field="question", answer_field="answer", answer_extract="gsm8k")
    assert all_examples(again) == splits  # deterministic
    assert task.name == "gsm8k" and "gsm8k.jsonl" in task.description


def test_a_file_task_runs_in_the_env(tmp_path):
    rows = [{"prompt": f"Copy {w}", "answer": w} for w in ("ab", "ba", "aab", "bba", "abab", "baba", "bbb", "aaa")]
    task = from_file(write_jsonl(tmp_path / "copy.jsonl", rows))
    env = textgym.TextGenEnv(task=task, tokenizer="char", max_new_tokens=6)
    env.reset(seed=0)
    for ch in env.example.answer:
        env.step(env.tokenizer.encode(ch)[0])
    _, reward, terminated, _, info = env.step(env.tokenizer.eos_token_id)
    assert terminated and reward == 1.0 and info["answer"] == env.example.answer


def test_csv_and_tsv_one_file_per_split(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"problem": "1+1", "solution": r"so \boxed{2}", "level": "1"},
                                               {"problem": "1/2+1/2", "solution": r"\boxed{\frac{2}{2}}", "level": "2"}])
    test = write_csv(tmp_path / "test.tsv", [{"problem": "2+2", "solution": r"\boxed{4}", "level": "1"}], delimiter="\t")
    task = from_file({"train": train, "test": test}, prompt_field="problem", answer_field="solution",
                     answer_extract="boxed", reward="boxed_math")
    assert [task.num_examples(s) for s in Task.SPLITS] == [2, 0, 1]
    ex = task.example("test", 0)
    assert (ex.prompt, ex.answer, ex.metadata) == ("2+2", "4", {"level": "1", "solution": r"\boxed{4}"})
    assert task.reward(r"The answer is \boxed{4}.", ex) == 1.0
    with pytest.raises(ValueError, match="split 'validation' of task 'train' is empty: .* no validation rows were given"):
        task.example("validation", 0)


def test_parquet_and_json(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pyarrow.Table.from_pylist([{"q": "2*3", "a": 6, "tag": "mul"}, {"q": "2*4", "a": 8, "tag": "mul"}]),
                   tmp_path / "d.parquet")
    task = from_file({"train": tmp_path / "d.parquet"}, prompt_field="q", answer_field="a", reward="numeric_match")
    ex = task.example("train", 0)
    assert ex.answer in ("6", "8") and ex.metadata == {"tag": "mul"}  # numbers become text answers
    (tmp_path / "d.json").write_text(json.dumps([{"prompt": "p", "answer": "a"}]))
    assert from_file({"test": tmp_path / "d.json"}).example("test", 0).answer == "a"
    (tmp_path / "data.txt").write_text('{"prompt": "p", "answer": "a"}\n')
    assert from_file({"train": tmp_path / "data.txt"}, format="jsonl").example("train", 0).prompt == "p"


def test_r1_zero_style_and_task_options(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS)
    task = from_file(path, prompt_field="question", answer_field="answer", answer_extract="gsm8k", reward="gsm8k",
                     prompt_style="r1_zero", instruction="Show your work.", system_prompt="Be brief.")
    ex = task.example("train", 0)
    assert task.format_prompt(ex).endswith(f"User: {ex.prompt}\nAssistant: <think>") and task.system_prompt == "Be brief."
    assert score(task.reward, f"adding </think> <answer>{ex.answer}</answer>", ex).components == {"format": 1.0, "answer": 1.0}
    with pytest.raises(TypeError, match="unexpected argument.*colour"):
        from_file(path, prompt_field="question", colour="red")


def test_task_families_by_name(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS)
    task = make_task(f"file:{path}", prompt_field="question", answer_field="answer", answer_extract="gsm8k")
    assert task.example("train", 0).answer.isdigit()
    datasets.Dataset.from_list(GSM8K_ROWS[:20]).save_to_disk(str(tmp_path / "saved"))
    hub = make_task(f"hf:{tmp_path / 'saved'}", prompt_field="question", answer_field="answer", answer_extract="gsm8k")
    assert sum(hub.num_examples(s) for s in Task.SPLITS) == 20


# -- Hugging Face datasets (no hub here: datasets saved to disk, and the offline error) -------------

def test_hub_dataset_saved_to_disk(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K_ROWS[:150]),
                               "test": datasets.Dataset.from_list(GSM8K_ROWS[150:])})
    dd.save_to_disk(str(tmp_path / "gsm8k"))
    kwargs = dict(prompt_field="question", answer_field="answer", answer_extract="gsm8k", reward="gsm8k")
    task = from_hub(str(tmp_path / "gsm8k"), **kwargs)  # its own train and test splits
    assert [task.num_examples(s) for s in Task.SPLITS] == [150, 0, 50]
    hashed = from_hub(str(tmp_path / "gsm8k"), splits="train", **kwargs)  # one split, divided by hash
    assert sum(hashed.num_examples(s) for s in Task.SPLITS) == 150 and hashed.num_examples("validation") > 0
    mapped = from_hub(str(tmp_path / "gsm8k"), splits={"validation": "test"}, **kwargs)
    assert [mapped.num_examples(s) for s in Task.SPLITS] == [0, 50, 0]
    with pytest.raises(ValueError, match="has no split 'dev'; its splits are: train, test"):
        from_hub(str(tmp_path / "gsm8k"), splits={"validation": "dev"}, **kwargs)


def test_hub_directory_of_data_files(tmp_path):
    data = tmp_path / "math"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"problem": "1+1", "answer": "2"}, {"problem": "2+1", "answer": "3"}])
    write_jsonl(data / "test.jsonl", [{"problem": "3+1", "answer": "4"}])
    task = from_hub(str(data), prompt_field="problem", reward="math_equiv")
    assert [task.num_examples(s) for s in Task.SPLITS] == [2, 0, 1]


def test_hub_offline_without_cache_says_what_to_do(tmp_path):
    code = ("from textgym.tasks import from_hub\n"
            "try:\n    from_hub('openai/gsm8k', 'main', prompt_field='question')\n"
            "except ConnectionError as e:\n    print('ERROR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert "ERROR could not load 'openai/gsm8k' (config 'main')" in out.stdout, out.stderr[-2000:]
    assert "not in the local cache" in out.stdout and "save_to_disk" in out.stdout


# -- bad input --------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file: .*nope.jsonl"):
        from_file(tmp_path / "nope.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(FileNotFoundError, match="it is a directory"):
        from_file({"train": tmp_path / "dir.jsonl"})


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"prompt": "a", "answer": "1"}\n\n{"prompt": "b" "answer": "2"}\n', r"bad.jsonl line 3 is not valid JSON"),
    ("list.jsonl", '{"prompt": "a", "answer": "1"}\n["b", "2"]\n', r"list.jsonl line 2 is a JSON list, not an object"),
    ("bad.json", '[{"prompt": "a", "answer": "1"},', r"bad.json is not valid JSON"),
    ("scalar.json", '"text"', r"scalar.json holds a JSON str; expected a list of objects"),
    ("bad.csv", 'prompt,answer\na,1\nb,2,extra\n', r"bad.csv line 3 has 3 fields; the header has 2 \(prompt, answer\)"),
    ("bad.parquet", "not parquet at all", r"bad.parquet is not a readable Parquet file"),
    ("data.xml", "<rows/>", r"cannot tell the format of .*data.xml from its suffix; name it .jsonl"),
])
def test_malformed_files_name_the_place(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        from_file({"train": tmp_path / name})


def test_unknown_field_lists_the_fields(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS[:5])
    with pytest.raises(ValueError, match=r"g.jsonl line 1 has no field 'prompt'; its fields are: question, answer, id"):
        from_file(path)
    with pytest.raises(ValueError, match=r"has no field 'solution'; its fields are: question, answer, id"):
        from_file(path, prompt_field="question", answer_field="solution")
    rows = GSM8K_ROWS[:3] + [{"question": "q"}]
    with pytest.raises(ValueError, match=r"line 4 has no field 'answer'; its fields are: question$"):
        from_file(write_jsonl(tmp_path / "h.jsonl", rows), prompt_field="question")


def test_bad_values_name_the_row(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "a", "answer": "#### 1"}, {"prompt": "b", "answer": "no marker"}])
    with pytest.raises(ValueError, match=r"g.jsonl line 2: answer_extract found no answer in the 'answer' field 'no marker'"):
        from_file(path, answer_extract="gsm8k")
    with pytest.raises(ValueError, match="unknown answer_extract 'gsm9k'; known: answer_tag, boxed, first_line, gsm8k"):
        from_file(path, answer_extract="gsm9k")
    for row, message in [({"prompt": "", "answer": "1"}, "prompt field 'prompt' must be non-empty text"),
                         ({"prompt": ["a"], "answer": "1"}, "prompt field 'prompt' must be non-empty text"),
                         ({"prompt": "a", "answer": None}, "answer field 'answer' must be text or a number")]:
        with pytest.raises(ValueError, match=rf"line 1: the {message}"):
            from_file(write_jsonl(tmp_path / "r.jsonl", [row]))


def test_empty_file_and_empty_split(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl has no rows"):
        from_file(tmp_path / "empty.jsonl")
    (tmp_path / "header.csv").write_text("prompt,answer\n")
    with pytest.raises(ValueError, match=r"header.csv has no rows \(it is split 'test'\)"):
        from_file({"train": write_jsonl(tmp_path / "t.jsonl", GSM8K_ROWS[:2]), "test": tmp_path / "header.csv"},
                  prompt_field="question")
    tiny = from_file(write_jsonl(tmp_path / "tiny.jsonl", [{"prompt": "only one", "answer": "1"}]))
    empty = next(s for s in Task.SPLITS if tiny.num_examples(s) == 0)
    with pytest.raises(ValueError, match=rf"split '{empty}' of task 'tiny' is empty: .*tiny.jsonl has 1 rows, divided 80/10/10"):
        tiny.example(empty, 0)
    with pytest.raises(ValueError, match="unknown split.*'dev'"):
        from_file({"dev": tmp_path / "t.jsonl"}, prompt_field="question")
