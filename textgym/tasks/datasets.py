"""Tasks from data: JSONL, JSON, CSV and Parquet files, and Hugging Face `datasets`.

    from textgym.tasks.datasets import from_file, from_hub
    task = from_file("gsm8k_train.jsonl", prompt_field="question", answer_field="answer",
                     answer_extract="gsm8k", reward="gsm8k")        # one file, split 80/10/10 by hash
    task = from_file({"train": "train.csv", "test": "test.csv"}, prompt_field="problem",
                     answer_field="solution", answer_extract="boxed", reward="boxed_math")
    task = from_file("gsm8k_test.jsonl", split="test", ...)          # the whole file is the test split
    task = from_hub("openai/gsm8k", "main", prompt_field="question", answer_field="answer",
                    answer_extract="gsm8k", reward="gsm8k")         # the dataset's train and test splits
    make_task("file:gsm8k_train.jsonl", prompt_field="question", ...)  # the same, by name
    make_task("hf:openai/gsm8k", config="main", ...)

From the command line: `--task file:gsm8k_test.jsonl --task-kwargs '{"split": "test", "prompt_field":
"question", "answer_extract": "gsm8k", "reward": "gsm8k"}'`.

Each row becomes an `Example`: the prompt field is the question, the answer field the reference
answer (through `answer_extract` when given: the final number of a GSM8K solution, the \\boxed{}
of a MATH one), and every other field goes to `Example.metadata` for rewards to read (the raw
answer field too, when `answer_extract` changed it).

Splits: a mapping {split: file} (or {split: dataset split name}) uses each as given; a single file
with `split="test"` is that split whole (the others empty: "GSM8K test" is all 1319 problems); a
single file without it (or a dataset split) is divided 80/10/10 by a hash of the prompt, as the
built-in tasks are, so a question never lands in two splits.

Budget: when `answer_extract` reads the answer out of a worked solution (GSM8K's "... #### 72"),
the task recommends a token budget that fits its longest solution (`recommended_max_new_tokens`,
`budget_for`), which `textgym train/eval/bench` use unless --max-new-tokens says otherwise. Parquet needs pyarrow and `from_hub` needs `datasets`:
`pip install "textgym[data]"`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from textgym.rewards.extract import EXTRACTORS
from textgym.tasks.base import Example, Task, _ExampleListTask, budget_for, register_task_family, split_of

__all__ = ["from_file", "from_hub", "from_rows", "DatasetTask", "FORMATS"]

FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
INSTALL = 'pip install "textgym[data]"'

Row = Mapping[str, Any]
Source = Iterable[tuple[str, Row]]  # (where: "data.jsonl line 3", row)


class DatasetTask(_ExampleListTask):
    """A task made of rows of data (see `from_file`, `from_hub`, `from_rows`)."""

    def __init__(self, name: str, splits: dict[str, list[Example]], *, source: str, hashed: bool,
                 solutions: str | None = None, **kwargs: Any):  # fmt: skip
        super().__init__(name, splits, **kwargs)
        self.source, self.hashed = source, hashed
        self.params = {"source": source}
        # The rows' worked solutions (the raw answer field, where answer_extract read the answer out of
        # it) show how long a reply runs: the budget fits the longest.
        lengths = [len(str(e.metadata[solutions])) for exs in self._lists.values() for e in exs
                   if solutions is not None and solutions in e.metadata]  # fmt: skip
        self.recommended_max_new_tokens = budget_for(max(lengths)) if lengths else None

    def _empty_split_message(self, split: str, total: int) -> str:
        given = [s for s in self.SPLITS if self._lists[s]]
        how = ("divided 80/10/10 by a hash of the prompt, which left none for it; give more rows or one "
               "file per split" if self.hashed else f"no {split} rows were given (they are its {' and '.join(given)} "
               f"split); use another split (--split), or give the {split} split rows of its own")  # fmt: skip
        return f"split {split!r} of task {self.name!r} is empty: {self.source} has {total} rows, {how}"


# -- reading files ----------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    """The file's text: UTF-8, a leading byte-order mark dropped (spreadsheet programs write one).
    Other bytes raise a ValueError naming the line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(
            f"{path} line {line} is not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _parse_json(text: str, where: str, hint: str = "") -> Any:
    """json.loads with errors that name `where`; nesting too deep for Python's parser is one of them."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"column {e.colno}" if e.lineno == 1 else f"line {e.lineno}, column {e.colno}"
        raise ValueError(f"{where} is not valid JSON ({e.msg} at {at}){hint}: "
                         f"{text[max(0, e.pos - 40) : e.pos + 40].strip()!r}") from None  # fmt: skip
    except RecursionError:
        raise ValueError(f"{where} is JSON nested too deeply to read (lists or objects inside each other "
                         "thousands of levels deep); a row is an object of text or number fields") from None  # fmt: skip


def _read_jsonl(path: Path) -> Iterator[tuple[str, Row]]:
    for number, line in enumerate(io.StringIO(_read_text(path), newline=None), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        row = _parse_json(line, where)
        if not isinstance(row, dict):
            raise ValueError(f"{where} is a JSON {type(row).__name__}, not an object of fields")
        yield where, row


def _read_json(path: Path) -> Iterator[tuple[str, Row]]:
    data = _parse_json(_read_text(path), str(path), "; for one object per line, name the file .jsonl")
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise ValueError(
            f"{path} holds a JSON {type(data).__name__}; expected a list of objects (or JSON Lines as .jsonl)"
        )
    for number, row in enumerate(data):
        if not isinstance(row, dict):
            raise ValueError(f"{path} item {number} is a JSON {type(row).__name__}, not an object of fields")
        yield f"{path} item {number}", row


def _read_csv(path: Path, delimiter: str) -> Iterator[tuple[str, Row]]:
    with io.StringIO(_read_text(path), newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ValueError(f"{path} line 1 is not valid CSV: {e}") from None
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise ValueError(f"{path} line {reader.line_num} is not valid CSV: {e}") from None
            if not values:
                continue
            where = f"{path} line {reader.line_num}"
            if len(values) != len(header):
                raise ValueError(
                    f"{where} has {len(values)} fields; the header has {len(header)} ({', '.join(header)})"
                )
            yield where, dict(zip(header, values))


def _read_parquet(path: Path) -> Iterator[tuple[str, Row]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading Parquet files needs pyarrow: {INSTALL}") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's errors name no file
        raise ValueError(f"{path} is not a readable Parquet file: {e}") from None
    for number, row in enumerate(rows):
        yield f"{path} row {number}", row


def read_rows(path: str | Path, format: str | None = None) -> list[tuple[str, Row]]:
    """Every row of a data file as (where, row), `where` naming the file and line for messages."""
    path = Path(path)
    if format is None:
        format = FORMATS.get(path.suffix.lower())
        if format is None:
            raise ValueError(f"cannot tell the format of {path} from its suffix; name it "
                             f"{', '.join(FORMATS)} or pass format= one of {', '.join(sorted(set(FORMATS.values())))}")
    elif format not in FORMATS.values():
        raise ValueError(f"unknown format {format!r}; formats: {', '.join(sorted(set(FORMATS.values())))}")
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    readers: dict[str, Callable[[Path], Iterator[tuple[str, Row]]]] = {
        "jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet,
        "csv": lambda p: _read_csv(p, ","), "tsv": lambda p: _read_csv(p, "\t"),
    }
    return list(readers[format](path))


# -- rows to examples -------------------------------------------------------------------------------

def _extractor(answer_extract: str | Callable[[str], str | None] | None) -> Callable[[str], str | None] | None:
    if answer_extract is None or callable(answer_extract):
        return answer_extract
    if answer_extract not in EXTRACTORS:
        raise ValueError(
            f"unknown answer_extract {answer_extract!r}; known: {', '.join(sorted(EXTRACTORS))} (or a function)"
        )
    return EXTRACTORS[answer_extract]


def _to_example(where: str, row: Row, prompt_field: str, answer_field: str,
                extract: Callable[[str], str | None] | None) -> Example:
    for field in (prompt_field, answer_field):
        if field not in row:
            raise ValueError(f"{where} has no field {field!r}; its fields are: {', '.join(map(str, row))}")
    prompt, raw = row[prompt_field], row[answer_field]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: the prompt field {prompt_field!r} must be non-empty text, got {prompt!r:.80}")
    if raw is None or isinstance(raw, (dict, list)):
        raise ValueError(f"{where}: the answer field {answer_field!r} must be text or a number, got {raw!r:.80}")
    answer = str(raw)
    metadata = {k: v for k, v in row.items() if k not in (prompt_field, answer_field)}
    if extract is not None:
        extracted = extract(answer)
        if extracted is None:
            raise ValueError(f"{where}: answer_extract found no answer in the {answer_field!r} field {answer!r:.120}")
        if extracted != answer:
            metadata[answer_field] = raw
        answer = extracted
    return Example(prompt, answer, metadata)


def from_rows(
    name: str,
    rows: Source | Mapping[str, Source],
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    answer_extract: str | Callable[[str], str | None] | None = None,
    reward: Any = "exact_match",
    source: str | None = None,
    **task_kwargs: Any,
) -> DatasetTask:
    """A task from (where, row) pairs: one iterable to divide by hash, or {split: iterable}.

    The common core of `from_file` and `from_hub`; `where` names each row in error messages.
    `task_kwargs`: prompt_style, seed, instruction, system_prompt, allowed_chars, description.
    """
    extract = _extractor(answer_extract)
    source = source or name
    hashed = not isinstance(rows, Mapping)
    splits: dict[str, list[Example]] = {s: [] for s in Task.SPLITS}
    if hashed:
        for where, row in rows:
            example = _to_example(where, row, prompt_field, answer_field, extract)
            splits[split_of(f"dataset:{example.prompt}")].append(example)
        if not any(splits.values()):
            raise ValueError(f"{source} has no rows")
    else:
        unknown = set(rows) - set(Task.SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are {', '.join(Task.SPLITS)}")
        for split, split_rows in rows.items():
            splits[split] = [_to_example(w, r, prompt_field, answer_field, extract) for w, r in split_rows]
            if not splits[split]:
                raise ValueError(f"split {split!r} of {source} has no rows")
    task_kwargs.setdefault("description", f"rows of {source}")
    kwargs = {"instruction": "", "prompt_style": "plain", "seed": 0, "allowed_chars": None, "system_prompt": None}
    unknown = set(task_kwargs) - set(kwargs) - {"description"}
    if unknown:
        raise TypeError(f"unexpected argument(s) {sorted(unknown)}; tasks from data take "
                        f"{', '.join(sorted(set(kwargs) | {'description'}))}")
    kwargs.update(task_kwargs)
    solutions = answer_field if extract is not None else None
    return DatasetTask(name, splits, source=source, hashed=hashed, solutions=solutions, reward=reward, **kwargs)


def from_file(
    path: str | Path | Mapping[str, str | Path],
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    answer_extract: str | Callable[[str], str | None] | None = None,
    reward: Any = "exact_match",
    format: str | None = None,
    name: str | None = None,
    split: str | None = None,
    **task_kwargs: Any,
) -> DatasetTask:
    """A task from a JSONL / JSON / CSV / TSV / Parquet file, or {split: file}.

    One file is divided 80/10/10 by a hash of the prompt, or with `split` ("train", "validation",
    "test") is that split whole; a mapping ({"train": ..., "test": ...}) uses each file as that
    split (splits not given are empty). The format comes from the suffix
    unless `format` says. `reward` scores the answer (a registered name such as "exact_match",
    "numeric_match", "gsm8k", "boxed_math", or a function). Other arguments: see `from_rows`.
    """
    if split is not None:
        if isinstance(path, Mapping):
            raise TypeError("split= makes one file a whole split; a {split: file} mapping already says each file's split")
        if split not in Task.SPLITS:
            raise ValueError(f"split must be one of {', '.join(Task.SPLITS)} (the split the whole file is), got {split!r}")
        path = {split: path}
    if isinstance(path, Mapping):
        rows: Source | dict[str, Source] = {s: read_rows(p, format) for s, p in path.items()}
        for s, p in path.items():
            if not rows[s]:
                raise ValueError(f"{p} has no rows (it is split {s!r})")
        source = ", ".join(str(p) for p in path.values())
        default_name = Path(next(iter(path.values()))).stem if path else "data"
    else:
        rows, source, default_name = read_rows(path, format), str(path), Path(path).stem
    return from_rows(name or default_name, rows, prompt_field=prompt_field, answer_field=answer_field,
                     answer_extract=answer_extract, reward=reward, source=source, **task_kwargs)


def _load_hub_split(name: str, config: str | None, split: str, cache_dir: str | None):
    try:
        import datasets
    except ImportError:
        raise ImportError(f"from_hub needs the `datasets` package: {INSTALL}") from None
    local = Path(name)
    if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
        loaded = datasets.load_from_disk(str(local))  # a dataset saved with save_to_disk
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{name} has no split {split!r}; its splits are: {', '.join(loaded)}")
            return loaded[split]
        if split != "train":
            raise ValueError(f"{name} is a single saved split; use splits='train' (then it is divided by hash)")
        return loaded
    try:
        return datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    except ConnectionError as e:  # datasets raises it both offline and when the hub is unreachable
        raise _unreachable(name, config, cache_dir, e) from None


def _unreachable(name: str, config: str | None, cache_dir: str | None, error: Exception) -> ConnectionError:
    import datasets

    return ConnectionError(
        f"could not load {name!r}" + (f" (config {config!r})" if config else "") + f" from the Hugging Face hub "
        f"({error}), and it is not in the local cache ({cache_dir or datasets.config.HF_DATASETS_CACHE}). "
        "Load it once where there is network (it is then cached; HF_HUB_OFFLINE=1 makes later loads use only "
        "the cache), or save it with `dataset.save_to_disk(DIR)` and pass DIR as the name."
    )


def from_hub(
    name: str,
    config: str | None = None,
    *,
    splits: str | Mapping[str, str] | None = None,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    answer_extract: str | Callable[[str], str | None] | None = None,
    reward: Any = "exact_match",
    cache_dir: str | None = None,
    task_name: str | None = None,
    **task_kwargs: Any,
) -> DatasetTask:
    """A task from `datasets.load_dataset(name, config, split=...)`, or from a local directory.

    `name`: a hub dataset ("openai/gsm8k"); a directory written by `Dataset(Dict).save_to_disk`;
    or a directory of data files. `splits`: {textgym split: dataset split}, e.g. {"train":
    "train", "test": "test"}; a single split name, divided 80/10/10 by hash; or None: the
    dataset's own "train", "validation" and "test" splits, those it has. Without network it works
    from a local directory or the Hugging Face cache; otherwise a ConnectionError says what to do.
    `task_name` defaults to the last part of `name`; other arguments: see `from_file`.
    """
    if splits is None:
        available = _split_names(name, config, cache_dir)
        wanted = {s: s for s in Task.SPLITS if s in available}
        if not wanted:
            raise ValueError(f"{name} has none of the splits {', '.join(Task.SPLITS)} (it has {', '.join(available)}); "
                             "pass splits={'train': '<its split>', ...} or splits='<its split>' to divide by hash")
        splits = wanted
    if isinstance(splits, str):
        data = _load_hub_split(name, config, splits, cache_dir)
        rows: Source | dict[str, Source] = _rows_of(data, f"{name}[{splits}]")
    else:
        rows = {ours: _rows_of(_load_hub_split(name, config, theirs, cache_dir), f"{name}[{theirs}]")
                for ours, theirs in splits.items()}
    return from_rows(task_name or name.rstrip("/").split("/")[-1], rows, prompt_field=prompt_field,
                     answer_field=answer_field, answer_extract=answer_extract, reward=reward, source=name,
                     **task_kwargs)


def _rows_of(data, label: str) -> list[tuple[str, Row]]:
    return [(f"{label} row {i}", row) for i, row in enumerate(data)]


def _split_names(name: str, config: str | None, cache_dir: str | None) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise ImportError(f"from_hub needs the `datasets` package: {INSTALL}") from None
    local = Path(name)
    if local.is_dir() and (local / "dataset_dict.json").exists():
        return list(json.loads((local / "dataset_dict.json").read_text())["splits"])
    if local.is_dir() and (local / "state.json").exists():
        return ["train"]
    try:
        return list(datasets.get_dataset_split_names(name, config, cache_dir=cache_dir))
    except ConnectionError:
        pass  # the hub is out of reach; the cache may still hold the whole dataset
    try:
        return list(datasets.load_dataset(name, config, cache_dir=cache_dir))
    except ConnectionError as e:
        raise _unreachable(name, config, cache_dir, e) from None


def _file_family(member: str, **kwargs: Any) -> DatasetTask:
    return from_file(member, **kwargs)


def _hub_family(member: str, **kwargs: Any) -> DatasetTask:
    return from_hub(member, kwargs.pop("config", None), **kwargs)


register_task_family("file", _file_family)
register_task_family("hf", _hub_family)
