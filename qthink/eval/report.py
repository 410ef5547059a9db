"""Scores per task (avg@k, pass@k, maj@k with 95% intervals), as markdown, JSON and a PNG plot."""

import json
from pathlib import Path

from qthink.eval import tasks as T
from qthink.eval.math_score import math_equal
from qthink.eval.metrics import interval, majority, pass_at_k


def latest_per_sample(records: list[dict]) -> dict[tuple, dict]:
    """One record per (task, id, sample): a success beats an earlier failure."""
    latest: dict[tuple, dict] = {}
    for r in records:
        key = (r["task"], str(r["id"]), r["sample"])
        if key not in latest or "failed" in latest[key]:
            latest[key] = r
    return latest


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _metric(values: list[float]) -> dict:
    score = sum(values) / len(values) if values else 0.0
    low, high = interval(values)
    return {"score": score, "ci95": [low, high]}


def summarize_task(task: T.Task, records: list[dict], samples: int, seed: int) -> dict:
    """Metrics of one task over the items that have all k samples answered."""
    by_item: dict[str, list[dict]] = {}
    for r in records:
        by_item.setdefault(str(r["id"]), []).append(r)
    items = {str(i["id"]): i for i in task.items}
    complete = {i: rs for i, rs in by_item.items() if i in items and len(rs) >= samples}
    avg = [sum(r["correct"] for r in rs) / len(rs) for rs in complete.values()]
    metrics = {f"avg@{samples}": _metric(avg)}
    if samples > 1:
        passes = [pass_at_k(len(rs), sum(r["correct"] for r in rs), samples) for rs in complete.values()]
        metrics[f"pass@{samples}"] = _metric(passes)
        votes = [_vote(items[i], rs, seed) for i, rs in complete.items()]
        if any(v is not None for v in votes):
            metrics[f"maj@{samples}"] = _metric([float(bool(v)) for v in votes])
    answered = [r for rs in complete.values() for r in rs]
    return {
        "items": len(complete),
        "items_total": len(task.items),
        "samples": samples,
        "metrics": metrics,
        "mean_thinking_tokens": _mean([r.get("thinking_tokens") for r in answered]),
        "mean_answer_tokens": _mean([r.get("answer_tokens") for r in answered]),
        "failed_samples": sum("failed" in r for r in answered),
        "answers_from_thinking": sum(r.get("source") == "thinking" for r in answered),
        "truncated": sum(r.get("finish_reason") == "length" for r in answered),
    }


def _vote(item: dict, records: list[dict], seed: int) -> bool | None:
    votes = [r.get("vote") for r in records]
    if item["kind"] == "code":
        return None
    same = (lambda a, b: math_equal(a, b)) if item["kind"] == "math" else None
    winner = majority(votes, same)
    return winner is not None and T.vote_correct(item, winner, seed)


def summarize(task_list: list[T.Task], records: list[dict], config: dict) -> dict:
    latest = list(latest_per_sample(records).values())
    return {
        "config": config,
        "tasks": {
            task.name: summarize_task(
                task, [r for r in latest if r["task"] == task.name], config["samples"], config["seed"]
            )
            for task in task_list
        },
    }


def _tokens(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def markdown(summary: dict) -> str:
    """The table: task, metric, score, 95% CI, items, mean thinking and answer tokens."""
    lines = [
        "| task | metric | score | 95% CI | items | mean thinking tokens | mean answer tokens |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, task in summary["tasks"].items():
        for metric, value in task["metrics"].items():
            low, high = value["ci95"]
            lines.append(
                f"| {name} | {metric} | {value['score']:.1%} | {low:.1%}–{high:.1%} | {task['items']} | "
                f"{_tokens(task['mean_thinking_tokens'])} | {_tokens(task['mean_answer_tokens'])} |"
            )
    return "\n".join(lines)


def plot(records: list[dict], path: Path, bins: int = 6) -> Path:
    """Accuracy against thinking length, one line per task, bins of equal sample count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for task in sorted({r["task"] for r in records}):
        points = sorted(
            (r["thinking_tokens"], float(r["correct"]))
            for r in records
            if r["task"] == task and r.get("thinking_tokens") is not None
        )
        if not points:
            continue
        size = max(1, -(-len(points) // bins))
        chunks = [points[i : i + size] for i in range(0, len(points), size)]
        xs = [sum(t for t, _ in c) / len(c) for c in chunks]
        ys = [sum(ok for _, ok in c) / len(c) for c in chunks]
        ax.plot(xs, ys, marker="o", label=task)
    ax.set_xlabel("thinking tokens (mean of bin)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    ax.set_title("Accuracy vs thinking length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(summary: dict, records: list[dict], stem: Path) -> list[Path]:
    """STEM.md, STEM.json and STEM.png next to each other."""
    md, js, png = stem.with_suffix(".md"), stem.with_suffix(".json"), stem.with_suffix(".png")
    md.write_text(markdown(summary) + "\n")
    js.write_text(json.dumps(summary, indent=2) + "\n")
    plot(list(latest_per_sample(records).values()), png)
    return [md, js, png]


def compare(a: dict, b: dict, name_a: str = "a", name_b: str = "b") -> str:
    """Two summaries side by side: every task and metric either has, with the difference."""
    lines = [
        f"| task | metric | {name_a} | {name_b} | Δ | {name_a} thinking tokens | {name_b} thinking tokens |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for task in sorted(set(a["tasks"]) | set(b["tasks"])):
        ta, tb = a["tasks"].get(task, {}), b["tasks"].get(task, {})
        for metric in sorted(set(ta.get("metrics", {})) | set(tb.get("metrics", {}))):
            sa, sb = (t.get("metrics", {}).get(metric, {}).get("score") for t in (ta, tb))
            delta = f"{(sb - sa) * 100:+.1f} pt" if sa is not None and sb is not None else "-"
            show = lambda s: "-" if s is None else f"{s:.1%}"
            lines.append(
                f"| {task} | {metric} | {show(sa)} | {show(sb)} | {delta} | "
                f"{_tokens(ta.get('mean_thinking_tokens'))} | {_tokens(tb.get('mean_thinking_tokens'))} |"
            )
    return "\n".join(lines)
