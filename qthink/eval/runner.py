"""Ask every item k times with bounded concurrency; append each scored sample to a JSONL file."""

import asyncio
import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from qthink.eval import tasks as T
from qthink.eval.client import Answer, EndpointPool

DEFAULT_MAX_TOKENS = 32_768
LONG_MAX_TOKENS = 81_920


@dataclass
class RunConfig:
    """The model card's sampling by default: temperature 0.6, top_p 0.95, top_k 20."""

    base_urls: list[str]
    output: Path
    model: str | None = None
    api_key: str = "EMPTY"
    samples: int = 1
    concurrency: int = 32
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_tokens: int | None = None  # None: 32,768, or 81,920 for math and code
    seed: int = 0
    timeout: float = 3600.0
    retries: int = 5
    backoff: float = 1.0
    extra_body: dict = field(default_factory=dict)
    progress: bool = True


def sample_key(task: str, item_id, sample: int) -> tuple:
    return task, str(item_id), sample


class OutputInUse(RuntimeError):
    """Another run holds the lock on the same results file."""


@contextlib.contextmanager
def locked_results(path: Path):
    """The results file opened for appending under an exclusive lock, its cut-off last line dropped.

    A run killed mid-write can leave a last line without its newline, even cut inside a
    multi-byte character: that sample is asked again. Two runs on one file would interleave
    and double samples, so a second one is refused while the first holds the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        try:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUse(f"{path} is being written by another run (it holds the file's lock)") from None
        data = path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            os.ftruncate(out.fileno(), complete)
        yield out


def finished_keys(path: Path) -> set[tuple]:
    """Samples already answered in an earlier run (failed ones are asked again)."""
    return {sample_key(r["task"], r["id"], r["sample"]) for r in read_records(path) if "failed" not in r}


def read_records(path: Path) -> list[dict]:
    """Every complete record; a line that is not valid JSON (cut short by a kill) is skipped."""
    records = []
    for line in path.read_bytes().split(b"\n") if path.is_file() else []:
        try:
            records.append(json.loads(line.decode("utf-8", errors="replace")))
        except json.JSONDecodeError:
            continue
    return records


def request(item: dict, config: RunConfig, model: str, sample: int) -> dict:
    default = LONG_MAX_TOKENS if item["kind"] in T.LONG_OUTPUT_KINDS else DEFAULT_MAX_TOKENS
    body = {
        "model": model,
        "messages": T.messages(item, config.seed),
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_tokens": config.max_tokens or default,
        "seed": config.seed + sample,
        "extra_body": {"top_k": config.top_k, **config.extra_body},
    }
    if tools := T.tools(item):
        body["tools"] = tools
    return body


def token_split(answer: Answer) -> tuple[int | None, int | None, bool]:
    """(thinking tokens, answer tokens, estimated?): from usage, else shared out by characters."""
    total, thinking = answer.completion_tokens, answer.reasoning_tokens
    if total is None:
        return None, None, True
    if thinking is not None:
        return thinking, total - thinking, False
    chars_thinking, chars_answer = len(answer.reply.reasoning or ""), len(answer.reply.content or "")
    share = chars_thinking / max(1, chars_thinking + chars_answer)
    return round(total * share), total - round(total * share), True


async def score_reply(item: dict, answer: Answer, seed: int) -> dict:
    try:
        if item["kind"] == "code":  # programs run for seconds: keep the event loop free
            return await asyncio.to_thread(T.score, item, answer.reply, seed)
        return T.score(item, answer.reply, seed)
    except Exception as e:  # noqa: BLE001 - one odd answer must not end a run of thousands
        return {"correct": False, "extracted": None, "error": f"scoring failed: {type(e).__name__}: {e}"}


async def ask(pool: EndpointPool, task: str, item: dict, sample: int, config: RunConfig, model: str) -> dict:
    base = {"task": task, "id": item["id"], "sample": sample, "kind": item["kind"]}
    try:
        answer = await pool.chat(request(item, config, model, sample))
    except Exception as e:  # noqa: BLE001 - any failure is recorded; the run goes on and a resume retries it
        return {**base, "failed": f"{type(e).__name__}: {e}", "correct": False}
    verdict = await score_reply(item, answer, config.seed)
    thinking, answer_tokens, estimated = token_split(answer)
    return {
        **base,
        **verdict,
        "vote": T.vote_key(item, verdict.get("extracted")),
        "finish_reason": answer.reply.finish_reason,
        "thinking_tokens": thinking,
        "answer_tokens": answer_tokens,
        "tokens_estimated": estimated,
        "endpoint": answer.endpoint,
        "attempts": answer.attempts,
        "reasoning": answer.reply.reasoning,
        "content": answer.reply.content,
    }


async def run_tasks(task_list: list[T.Task], config: RunConfig) -> list[dict]:
    """Ask what the output file does not hold yet; return every record of these tasks."""
    with locked_results(config.output) as out:
        done = finished_keys(config.output)
        todo = [
            (task.name, item, sample)
            for task in task_list
            for item in task.items
            for sample in range(config.samples)
            if sample_key(task.name, item["id"], sample) not in done
        ]
        pool = EndpointPool(config.base_urls, config.api_key, config.timeout, config.retries, config.backoff)
        try:
            model = config.model or (await pool.model_name() if todo else "")
            await _ask_all(pool, todo, config, model, out)
        finally:
            await pool.close()
    names = {task.name for task in task_list}
    return [r for r in read_records(config.output) if r["task"] in names]


async def _ask_all(pool: EndpointPool, todo: list, config: RunConfig, model: str, out) -> None:
    gate = asyncio.Semaphore(config.concurrency)
    bar = tqdm(total=len(todo), desc="eval", unit="sample", disable=not config.progress)
    right = seen = 0

    async def one(task: str, item: dict, sample: int) -> None:
        nonlocal right, seen
        async with gate:
            record = await ask(pool, task, item, sample, config, model)
        # appended whole as it finishes: a killed run resumes from here
        out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        out.flush()
        right, seen = right + bool(record["correct"]), seen + 1
        bar.set_postfix(acc=f"{right / seen:.1%}")
        bar.update()

    await asyncio.gather(*(one(*job) for job in todo))
    bar.close()
