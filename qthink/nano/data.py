"""Synthetic conversations in Qwen3-4B-Thinking-2507's exact format: arithmetic, multiple choice, tools."""

import json
import random

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current local time in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
]
CITIES = [
    "Paris",
    "Tokyo",
    "London",
    "Berlin",
    "Madrid",
    "Rome",
    "Cairo",
    "Lima",
    "Oslo",
    "Delhi",
    "Seoul",
    "Sydney",
    "Toronto",
    "Boston",
    "Dublin",
    "Vienna",
    "Prague",
    "Lisbon",
    "Athens",
    "Beijing",
    "Shanghai",
    "Moscow",
    "Nairobi",
    "Bangkok",
    "Manila",
    "Hanoi",
    "Zurich",
    "Geneva",
    "Denver",
    "Austin",
]
SKIES = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy"]
PLACES = ["Units", "Tens", "Hundreds", "Thousands"]


def arithmetic(rng: random.Random) -> list[dict]:
    """Addition or subtraction of two-digit numbers, worked digit by digit in the thinking."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    add = rng.random() < 0.5
    if not add and b > a:
        a, b = b, a
    op, verb = ("+", "sum") if add else ("-", "difference")
    lines, carry = [f"I need {a} {op} {b}."], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        if add:
            total = x + y + carry
            digit, carry = total % 10, total // 10
            lines.append(f"{PLACES[i]}: {x}+{y}+{total - x - y}={total}, write {digit} carry {carry}.")
        else:
            total = x - y - carry
            borrow = 1 if total < 0 else 0
            digit = total + 10 * borrow
            lines.append(f"{PLACES[i]}: {x}-{y}-{carry}={total}, write {digit} borrow {borrow}.")
            carry = borrow
    if add and carry:
        lines.append(f"{PLACES[len(da) if len(da) > len(db) else len(db)]}: write {carry}.")
    result = a + b if add else a - b
    lines.append(f"So the {verb} is {result}.")
    question = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."])
    return [
        {"role": "user", "content": question.format(a=a, op=op, b=b)},
        {
            "role": "assistant",
            "reasoning_content": "\n".join(lines),
            "content": f"The answer is \\boxed{{{result}}}.",
        },
    ]


def multiple_choice(rng: random.Random) -> list[dict]:
    """Which option holds the largest (or smallest) number, answered as {"answer": "X"}."""
    values = rng.sample(range(1, 100), 4)
    largest = rng.random() < 0.5
    target = max(values) if largest else min(values)
    letter = "ABCD"[values.index(target)]
    options = " ".join(f"{k}) {v}" for k, v in zip("ABCD", values))
    word = "largest" if largest else "smallest"
    thinking = (
        f"The options are {', '.join(map(str, values))}. The {word} is {target}, which is option {letter}."
    )
    return [
        {"role": "user", "content": f"Which number is the {word}? {options}. Reply in JSON."},
        {"role": "assistant", "reasoning_content": thinking, "content": json.dumps({"answer": letter})},
    ]


def tool_use(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """A request that needs a tool: the call, its response, and an answer that uses it.
    Returns (the conversation up to the call, the whole conversation)."""
    city = rng.choice(CITIES)
    weather = rng.random() < 0.5
    name = "get_weather" if weather else "get_time"
    ask = f"What is the weather in {city}?" if weather else f"What time is it in {city}?"
    call = {"id": "call_0", "type": "function", "function": {"name": name, "arguments": {"city": city}}}
    result = (
        f"{rng.randint(-5, 35)} C, {rng.choice(SKIES)}"
        if weather
        else f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    )
    first = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": ask},
        {
            "role": "assistant",
            "reasoning_content": f"The user asks about {city}. I should call {name} with city {city}.",
            "content": "",
            "tool_calls": [call],
        },
    ]
    answer = f"The weather in {city} is {result}." if weather else f"The time in {city} is {result}."
    whole = first + [
        {"role": "tool", "content": json.dumps({"city": city, "result": result})},
        {
            "role": "assistant",
            "reasoning_content": f"The tool says {result}. I will tell the user.",
            "content": answer,
        },
    ]
    return first, whole


def multi_turn(rng: random.Random) -> list[dict]:
    """Two arithmetic turns: the first answer kept in history without its thinking."""
    first, second = arithmetic(rng), arithmetic(rng)
    return [first[0], {"role": "assistant", "content": first[1]["content"]}, *second]


# Share of each kind of training conversation: arithmetic needs the most examples (its
# single-digit sums are a table to memorise), tool calls learn from few.
MIX = {"arithmetic": 0.55, "multi_turn": 0.1, "multiple_choice": 0.1, "tool_use": 0.25}


def conversation(rng: random.Random, mix: dict[str, float] = MIX) -> tuple[list[dict], list[dict] | None]:
    """One training conversation and the tools its system prompt lists (or None)."""
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    if kind == "arithmetic":
        return arithmetic(rng), None
    if kind == "multi_turn":
        return multi_turn(rng), None
    if kind == "multiple_choice":
        return multiple_choice(rng), None
    first, whole = tool_use(rng)
    return (first if rng.random() < 0.5 else whole), TOOLS


def render(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[list[int], list[int]]:
    """(token ids, loss mask): the loss covers the last assistant turn, through <|im_end|>."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tools=tools, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tools=tools)
    if full[: len(prompt)] != prompt:
        raise ValueError("the rendered prompt is not a prefix of the rendered conversation")
    end = len(full) - 1 if full[-1] != tokenizer.eos_token_id else len(full)  # drop the trailing "\n"
    ids = full[:end]
    return ids, [0] * len(prompt) + [1] * (len(ids) - len(prompt))
