"""Synthetic conversations in Qwen3-4B-Thinking-2507's exact format: arithmetic, multiple choice, tools."""

import json
import random
import zlib

TOOLS: list[dict] = [
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


def _expression(a: int, op: str, b: int, spaced: bool) -> str:
    return f"{a} {op} {b}" if spaced else f"{a}{op}{b}"


def _question(rng: random.Random, a: int, op: str, b: int, spaced: bool | None) -> str:
    """The user's question, its operator spaced (`12 + 30`), unspaced, or either at random (None)."""
    spaced = rng.random() < 0.5 if spaced is None else spaced
    form = rng.choice(["What is {e}?", "Compute {e}.", "Calculate {e}."])
    return form.format(e=_expression(a, op, b, spaced))


def _addition_lines(a: int, b: int) -> list[str]:
    """Column addition, units first: one line per place and its carry."""
    lines, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry
        digit, carry = total % 10, total // 10
        lines.append(f"{PLACES[i]}: {x}+{y}+{total - x - y}={total}, write {digit} carry {carry}.")
    if carry:
        lines.append(f"{PLACES[max(len(da), len(db))]}: write {carry}.")
    return lines


def _subtraction_lines(a: int, b: int) -> list[str]:
    lines, borrow = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(len(da)):
        x, y = int(da[i]), int(db[i]) if i < len(db) else 0
        total = x - y - borrow
        carry_in, borrow = borrow, 1 if total < 0 else 0
        lines.append(f"{PLACES[i]}: {x}-{y}-{carry_in}={total}, write {total + 10 * borrow} borrow {borrow}.")
    return lines


def _answer(question: str, lines: list[str], result: int) -> list[dict]:
    return [
        {"role": "user", "content": question},
        {
            "role": "assistant",
            "reasoning_content": "\n".join(lines),
            "content": f"The answer is \\boxed{{{result}}}.",
        },
    ]


def arithmetic(rng: random.Random, spaced: bool | None = True) -> list[dict]:
    """Addition or subtraction of two-digit numbers, worked digit by digit in the thinking."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    add = rng.random() < 0.5
    if not add and b > a:
        a, b = b, a
    op, verb = ("+", "sum") if add else ("-", "difference")
    lines = [f"I need {a} {op} {b}."]
    lines += _addition_lines(a, b) if add else _subtraction_lines(a, b)
    result = a + b if add else a - b
    lines.append(f"So the {verb} is {result}.")
    return _answer(_question(rng, a, op, b, spaced), lines, result)


def _times_digit(a: int, d: int) -> tuple[list[str], int]:
    """`a * d` for one digit d, units first: each place's product, plus the carry."""
    parts, carry, digits = [], 0, []
    for x in map(int, str(a)[::-1]):
        product = x * d
        total = product + carry
        digits.append(total % 10)
        parts.append(f"{x}*{d}={product}, +{carry}={total}, write {total % 10} carry {total // 10}.")
        carry = total // 10
    if carry:
        parts.append(f"Then write {carry}.")
    return parts, a * d


def multiplication(rng: random.Random, spaced: bool | None = None) -> list[dict]:
    """A two-digit number times a one- or two-digit number: one partial product per digit of the
    multiplier, then their column sum, all worked in the thinking."""
    a = rng.randint(10, 99)
    b = rng.randint(2, 9) if rng.random() < 0.2 else rng.randint(10, 99)
    lines = [f"I need {a} * {b}."]
    units, tens = b % 10, b // 10
    parts, low = _times_digit(a, units)
    lines.append(f"{a} * {units}: " + " ".join(parts) + f" So {a} * {units} = {low}.")
    if tens:
        parts, high = _times_digit(a, tens)
        lines.append(
            f"{a} * {tens}: " + " ".join(parts) + f" So {a} * {tens} = {high}, and {a} * {tens}0 = {high}0."
        )
        lines.append(f"Now {low} + {high}0.")
        lines += _addition_lines(low, high * 10)
    lines.append(f"So the product is {a * b}.")
    return _answer(_question(rng, a, "*", b, spaced), lines, a * b)


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
    first: list[dict] = [
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


# Generated tools: a verb and a subject make a name (`fetch_stock_price`), the subject's argument
# is renamed per tool, and the question names the subject; every fifth verb-subject pair is held
# out of training, so the evaluation asks for tools nano has never seen.
VERBS = ["get", "fetch", "lookup", "find", "query", "check", "read"]
SYMBOLS = ["ACME", "ZETA", "NOVA", "ORCA", "PIXL", "QUBE", "RAYS", "TIDE", "VOLT", "WAVE"]
WORDS = ["apple", "river", "window", "garden", "planet", "silver", "bridge", "forest", "candle", "rocket"]
COUNTRIES = ["France", "Japan", "Brazil", "Canada", "Kenya", "Norway", "Peru", "Egypt", "India", "Chile"]
PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
STATES = ["on time", "delayed", "boarding", "landed", "shipped", "pending", "open", "closed"]


def _number(lo: int, hi: int):
    return lambda rng: str(rng.randint(lo, hi))


def _code(prefix: str):
    return lambda rng: f"{prefix}{rng.randint(100, 999)}"


# subject, preposition, argument names, argument values, result
SUBJECTS: list[tuple] = [
    ("weather", "in", ["city", "location"], CITIES, lambda r: f"{r.randint(-5, 35)} C, {r.choice(SKIES)}"),
    ("time", "in", ["city", "place"], CITIES, lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"),
    ("population", "of", ["city", "city_name"], CITIES, _number(10_000, 9_999_999)),
    ("humidity", "in", ["city", "location"], CITIES, lambda r: f"{r.randint(5, 99)}%"),
    (
        "stock price",
        "of",
        ["symbol", "ticker"],
        SYMBOLS,
        lambda r: f"{r.randint(1, 999)}.{r.randint(0, 99):02d}",
    ),
    (
        "exchange rate",
        "for",
        ["currency", "code"],
        ["EUR", "JPY", "GBP", "CHF", "INR", "BRL"],
        lambda r: f"{r.randint(0, 150)}.{r.randint(0, 99):02d}",
    ),
    ("flight status", "of", ["flight", "flight_number"], None, lambda r: r.choice(STATES)),
    ("order status", "of", ["order_id", "order"], None, lambda r: r.choice(STATES)),
    ("capital", "of", ["country", "country_name"], COUNTRIES, lambda r: r.choice(CITIES)),
    ("currency", "of", ["country", "nation"], COUNTRIES, lambda r: r.choice(["EUR", "JPY", "GBP", "CHF"])),
    ("email", "of", ["username", "user"], PEOPLE, lambda r: f"{r.choice(PEOPLE)}@example.com"),
    ("rhyme", "for", ["word", "text"], WORDS, lambda r: r.choice(WORDS)),
    ("synonym", "for", ["word", "term"], WORDS, lambda r: r.choice(WORDS)),
    ("score", "of", ["team", "team_name"], CITIES, lambda r: f"{r.randint(0, 9)}-{r.randint(0, 9)}"),
]
CODES = {"flight status": _code("QF"), "order status": _code("A")}
SYSTEM_PROMPTS = [
    None,
    "You are a helpful assistant.",
    "You are a concise assistant.",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "Answer the user's question. Use a tool when it helps.",
    "You are a support agent. Be brief and exact.",
    "You help travellers plan their trips.",
    "You are an assistant with access to tools.",
]
QUESTIONS = [
    "What is the {s} {p} {v}?",
    "Tell me the {s} {p} {v}.",
    "Find the {s} {p} {v}.",
    "I need the {s} {p} {v}.",
]


def _name(verb: str, noun: str) -> str:
    return f"{verb}_{noun.replace(' ', '_')}"


def _held_out(verb: int, subject: int) -> bool:
    """Held out of training: every fifth pair, except the trained tools' own names (get_weather)."""
    trained = {t["function"]["name"] for t in TOOLS}
    return (verb + 2 * subject) % 5 == 0 and _name(VERBS[verb], SUBJECTS[subject][0]) not in trained


def _trained_pair(verb: int, subject: int) -> bool:
    """The generated tools training calls: all but every fifth pair."""
    return (verb + 2 * subject) % 5 != 0


HELD_OUT_NAMES = {
    _name(VERBS[v], SUBJECTS[s][0])
    for v in range(len(VERBS))
    for s in range(len(SUBJECTS))
    if _held_out(v, s)
}


def _tool_spec(verb: str, subject: tuple, argument: str) -> dict:
    noun, prep = subject[0], subject[1]
    return {
        "type": "function",
        "function": {
            "name": _name(verb, noun),
            "description": f"{verb.capitalize()} the {noun} {prep} a given {argument.replace('_', ' ')}.",
            "parameters": {
                "type": "object",
                "properties": {argument: {"type": "string"}},
                "required": [argument],
            },
        },
    }


def generated_tool_use(
    rng: random.Random, held_out: bool = False
) -> tuple[list[dict], list[dict], list[dict]]:
    """A call to a generated tool listed among one to three others, under a varied system prompt:
    (the conversation up to the call, the whole conversation, the tools). `held_out` draws the
    called tool from the pairs training never uses."""
    drawn = _held_out if held_out else _trained_pair
    pairs = [(v, s) for v in range(len(VERBS)) for s in range(len(SUBJECTS)) if drawn(v, s)]
    verb, index = rng.choice(pairs)
    subject = SUBJECTS[index]
    noun, prep, arguments, values, make_result = subject
    argument = rng.choice(arguments)
    value = CODES[noun](rng) if values is None else rng.choice(values)
    tool = _tool_spec(VERBS[verb], subject, argument)
    others = rng.sample([i for i in range(len(SUBJECTS)) if i != index], rng.randint(0, 2))
    tools = [tool] + [_tool_spec(rng.choice(VERBS), SUBJECTS[i], rng.choice(SUBJECTS[i][2])) for i in others]
    rng.shuffle(tools)
    call = (tool["function"]["name"], argument, value)
    return (*_tool_conversation(rng, QUESTIONS, (noun, prep), call, make_result), tools)


def _tool_conversation(
    rng: random.Random,
    questions: list[str],
    asked: tuple[str, str],
    call: tuple[str, str, str],
    make_result,
    checks: str = "",
) -> tuple[list[dict], list[dict]]:
    """A question about a (subject, preposition) answered by calling a tool (name, argument,
    value), the thinking going through `checks` first: the conversation up to the call, and the
    whole one with the tool's result and the answer that quotes it."""
    (subject, prep), (name, argument, value) = asked, call
    system = rng.choice(SYSTEM_PROMPTS)
    function = {"name": name, "arguments": {argument: value}}
    first: list[dict] = [{"role": "system", "content": system}] if system else []
    first += [
        {"role": "user", "content": rng.choice(questions).format(s=subject, p=prep, v=value)},
        {
            "role": "assistant",
            "reasoning_content": f"The user asks for the {subject} {prep} {value}. {checks}"
            f"I should call {name} with {argument} {value}.",
            "content": "",
            "tool_calls": [{"id": "call_0", "type": "function", "function": function}],
        },
    ]
    result = make_result(rng)
    response = json.dumps({argument: value, "result": result}) if rng.random() < 0.5 else result
    whole = first + [
        {"role": "tool", "content": response},
        {
            "role": "assistant",
            "reasoning_content": f"The tool says {result}. I will tell the user.",
            "content": f"The {subject} {prep} {value} is {result}.",
        },
    ]
    return first, whole


# Varied tools: names, subjects, parameters and values drawn from wide pools, so that no name or
# parameter can be recalled from training and the only way to call the right tool is to read its
# name and parameter from the schema and copy the value from the question. A fifth of the names
# (by a hash of the name) are never called in training: `varied_tool_use(held_out=True)` draws them.
TOOL_VERBS = "get fetch lookup find query check read search show load retrieve count track locate".split()
TOOL_NOUNS = (
    "account address alarm album article balance battery booking budget calendar camera card cart "
    "class comment contact course credit customer delivery device discount distance document driver "
    "event expense file forecast friend fuel grade hotel invoice item job language lesson library "
    "license machine meeting menu message movie note package parcel patient payment permit photo "
    "plan player playlist policy printer product project queue recipe record reminder report room "
    "route salary seat sensor server ship shop song station student subscription task ticket topic "
    "train trip vehicle visit wallet warehouse"
).split()
TOOL_ATTRIBUTES = (
    "status count size price rating owner level total history summary details length weight".split()
)
TOOL_KEYS = "id name code number key query city user date label".split()
VALUE_WORDS = "Amber Basil Cedar Delta Ember Falcon Granite Harbor Indigo Juniper Kestrel Lotus Maple".split()
PREPOSITIONS = ["of", "for", "in"]
DESCRIPTIONS = [
    "{Verb} the {subject} {prep} a given {key}.",
    "Returns the {subject} for a {key}.",
    "{Verb} the current {subject}.",
    "Look up the {subject} by {key}.",
]
MORE_QUESTIONS = QUESTIONS + [
    "Can you get the {s} {p} {v}?",
    "Please look up the {s} {p} {v}.",
    "What's the {s} {p} {v}?",
    "Show me the {s} {p} {v}.",
]


def _varied_value(rng: random.Random) -> str:
    """A value the question states and the call must copy: a code, a number, a city or a word."""
    kind = rng.randrange(5)
    if kind == 0:
        letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(rng.randint(1, 3)))
        return f"{letters}{rng.randint(10, 99999)}"
    if kind == 1:
        return str(rng.randint(1, 99999))
    if kind == 2:
        return rng.choice(CITIES)
    if kind == 3:
        return rng.choice(VALUE_WORDS)
    return rng.choice(PEOPLE)


def _varied_tool(rng: random.Random, noun: str | None = None) -> tuple[dict, str, str]:
    """A tool spec with one required string parameter, its subject phrase and its preposition."""
    noun = noun or rng.choice(TOOL_NOUNS)
    subject = f"{noun} {rng.choice(TOOL_ATTRIBUTES)}" if rng.random() < 0.7 else noun
    verb, prep = rng.choice(TOOL_VERBS), rng.choice(PREPOSITIONS)
    key = rng.choice([rng.choice(TOOL_KEYS), f"{noun}_{rng.choice(TOOL_KEYS)}"])
    description = rng.choice(DESCRIPTIONS).format(
        Verb=verb.capitalize(), subject=subject, prep=prep, key=key.replace("_", " ")
    )
    spec = {
        "type": "function",
        "function": {
            "name": _name(verb, subject),
            "description": description,
            "parameters": {"type": "object", "properties": {key: {"type": "string"}}, "required": [key]},
        },
    }
    return spec, subject, prep


def _novel(name: str) -> bool:
    """A fifth of the varied names, by hash: never called in training."""
    return zlib.crc32(name.encode()) % 5 == 0


def varied_tool_use(
    rng: random.Random, held_out: bool = False, others: int = 3, check_listed: bool = False
) -> tuple[list[dict], list[dict], list[dict]]:
    """A call to a varied tool listed among up to `others` more (some sharing its noun), under a
    varied system prompt, the thinking first going through the listed tools if `check_listed`:
    (the conversation up to the call, the whole conversation, the tools)."""
    while True:
        tool, subject, prep = _varied_tool(rng)
        name = tool["function"]["name"]
        if _novel(name) if held_out else not (_novel(name) or name in HELD_OUT_NAMES):
            break
    noun = subject.split()[0]
    tools, subjects = [tool], {subject}
    for _ in range(rng.randint(0, others)):
        other, other_subject, _ = _varied_tool(rng, noun if rng.random() < 0.4 else None)
        if other_subject not in subjects and other["function"]["name"] != name:
            tools.append(other)
            subjects.add(other_subject)
    rng.shuffle(tools)
    (key,) = tool["function"]["parameters"]["required"]
    call = (name, key, _varied_value(rng))
    checks = _listed_checks(tools, name) if check_listed else ""
    return (*_tool_conversation(rng, MORE_QUESTIONS, (subject, prep), call, _varied_result, checks), tools)


def _listed_checks(tools: list[dict], name: str) -> str:
    """The listed tools in order up to the one named, each with its parameter and whether it is
    the one: "fetch_ship takes ship_id: no. find_ship_level takes code: yes. " (each parameter
    said right after its tool's name, where copying it from the schema is one step)."""
    checks = []
    for tool in tools:
        listed = tool["function"]["name"]
        (key,) = tool["function"]["parameters"]["required"]
        checks.append(f"{listed} takes {key}: {'yes' if listed == name else 'no'}. ")
        if listed == name:
            break
    return "".join(checks)


def _varied_result(rng: random.Random) -> str:
    value, state = _varied_value(rng), rng.choice(STATES)
    return rng.choice([value, state, f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}"])


REPEAT_ASKS = ["Repeat after me: {x}", "Say exactly this: {x}", "Echo: {x}", "Copy this text: {x}"]
REPEATABLE = TOOL_VERBS + TOOL_NOUNS + TOOL_ATTRIBUTES + TOOL_KEYS + VALUE_WORDS + CITIES + PEOPLE


def _repeatable(rng: random.Random) -> str:
    """A value as tool calls carry them, a word of the tool pools, or an identifier of two or three."""
    kind = rng.random()
    if kind < 0.4:
        return _varied_value(rng)
    if kind < 0.7:
        return rng.choice(REPEATABLE)
    return "_".join(rng.choice(REPEATABLE).lower() for _ in range(rng.randint(2, 3)))


def repetition(rng: random.Random) -> list[dict]:
    """Say back a list of words, codes and identifiers exactly: the copying that a call to a tool
    read from its schema needs (its name, its parameter, the value from the question)."""
    text = " ".join(_repeatable(rng) for _ in range(rng.randint(2, 8)))
    return [
        {"role": "user", "content": rng.choice(REPEAT_ASKS).format(x=text)},
        {
            "role": "assistant",
            "reasoning_content": f"The user wants me to repeat: {text}. I will say it back.",
            "content": text,
        },
    ]


def multi_turn(rng: random.Random) -> list[dict]:
    """Two arithmetic turns: the first answer kept in history without its thinking."""
    first, second = arithmetic(rng), arithmetic(rng)
    return [first[0], {"role": "assistant", "content": first[1]["content"]}, *second]


# Share of each kind of training conversation, per stage. The base stage: arithmetic needs the
# most examples (its single-digit sums are a table to memorise), tool calls learn from few.
BASE_MIX = {"arithmetic": 0.55, "multi_turn": 0.1, "multiple_choice": 0.1, "tool_use": 0.25}
# The second stage adds what the base model cannot do, weighted toward it (multiplication, sums
# asked spaced or unspaced, generated tools found in the schema by their subject) and replays
# the base tasks so that they stay.
MIX = {
    "arithmetic_any_spacing": 0.2,
    "multiplication": 0.3,
    "multi_turn": 0.03,
    "multiple_choice": 0.05,
    "tool_use": 0.17,
    "generated_tool_use": 0.25,
}
# The third stage teaches calling a tool from its schema: varied tools (names and parameters
# that cannot be recalled) weighted up, everything before replayed.
TOOLS_MIX = {
    "arithmetic_any_spacing": 0.14,
    "multiplication": 0.2,
    "multi_turn": 0.03,
    "multiple_choice": 0.05,
    "tool_use": 0.1,
    "generated_tool_use": 0.13,
    "varied_tool_use": 0.35,
}
# The fourth stage goes on with it, the tools weighted further up.
SCHEMA_MIX = {
    "arithmetic_any_spacing": 0.1,
    "multiplication": 0.14,
    "multi_turn": 0.03,
    "multiple_choice": 0.07,
    "tool_use": 0.06,
    "generated_tool_use": 0.18,
    "varied_tool_use": 0.42,
}
# The fifth stage adds repetition (saying back words and codes exactly): the copying that calling
# a tool from its schema needs, which nano learns only from many examples of it.
COPY_MIX = {**SCHEMA_MIX, "varied_tool_use": 0.3, "repetition": 0.7}
# The sixth stage thinks through the listed tools, naming each one's parameter, before the call
# (varied tools weighted up, in the same place of the mix as before).
CHECK_MIX = {
    **{kind: share for kind, share in SCHEMA_MIX.items() if kind != "varied_tool_use"},
    "checked_tool_use": 0.6,
    "repetition": 0.4,
}


def conversation(rng: random.Random, mix: dict[str, float] = MIX) -> tuple[list[dict], list[dict] | None]:
    """One training conversation and the tools its system prompt lists (or None)."""
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    if kind == "repetition":
        return repetition(rng), None
    if kind == "arithmetic":
        return arithmetic(rng), None
    if kind == "arithmetic_any_spacing":
        return arithmetic(rng, spaced=None), None
    if kind == "multiplication":
        return multiplication(rng), None
    if kind == "multi_turn":
        return multi_turn(rng), None
    if kind == "multiple_choice":
        return multiple_choice(rng), None
    if kind in ("varied_tool_use", "checked_tool_use"):
        first, whole, tools = varied_tool_use(rng, check_listed=kind == "checked_tool_use")
        return (first if rng.random() < 0.5 else whole), tools
    if kind == "generated_tool_use":
        first, whole, tools = generated_tool_use(rng)
        return (first if rng.random() < 0.5 else whole), tools
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
