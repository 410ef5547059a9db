"""Stop strings across deltas, against a whole-text reference."""

import random

import pytest

from qthink.engine.stop import StopStringMatcher


def run(stops: list[str], deltas: list[str], include: bool = False) -> tuple[str, str | None, list[str]]:
    """Feed every delta (stopping at a match), flush when none matched: (text, matched, emits)."""
    matcher = StopStringMatcher(stops, include_stop_str_in_output=include)
    emits = []
    for delta in deltas:
        emit, stopped, matched = matcher.feed(delta)
        emits.append(emit)
        if stopped:
            return "".join(emits), matched, emits
    emits.append(matcher.flush())
    return "".join(emits), None, emits


def reference(stops: list[str], text: str, include: bool = False) -> tuple[str, str | None]:
    """Generate the text one character at a time and stop as soon as it ends with a stop
    string (the longest, when several end there)."""
    for end in range(1, len(text) + 1):
        for stop in sorted(filter(None, stops), key=len, reverse=True):
            if text[:end].endswith(stop):
                return text[: end if include else end - len(stop)], stop
    return text, None


@pytest.mark.parametrize(
    "deltas",
    [["Hello wor", "ld! STOP more"], ["Hello world! ST", "OP"], ["He", "llo world! S", "TO", "P tail"]],
)
def test_stop_split_across_deltas(deltas):
    assert run(["STOP"], deltas)[:2] == ("Hello world! ", "STOP")


def test_stop_at_the_very_start():
    assert run(["<<"], ["<", "<", "x"])[:2] == ("", "<<")
    assert run(["<<"], ["<<x"], include=True)[:2] == ("<<", "<<")


def test_earliest_of_several_stops_wins():
    assert run(["three", "one", "two"], ["zero one", " two three"])[:2] == ("zero ", "one")
    assert run(["three", "one", "two"], ["zero two one"])[:2] == ("zero ", "two")


def test_overlapping_stops():
    # "abc" completes before "bcd" could: generation would already have stopped there
    assert run(["bcd", "abc"], ["xab", "cd"])[:2] == ("x", "abc")
    # a stop nested inside a longer one completes first
    assert run(["abcd", "bc"], ["xa", "bcd"])[:2] == ("xa", "bc")
    # at the same end, the longer stop is reported (and kept whole when included)
    assert run(["cd", "bcd"], ["abcde"], include=True)[:2] == ("abcd", "bcd")


def test_include_stop_str_in_output_keeps_the_stop():
    assert run(["</answer>"], ["42</ans", "wer> junk"], include=True)[:2] == ("42</answer>", "</answer>")


def test_only_a_possible_stop_start_is_held_back():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("plain text") == ("plain text", False, None)  # nothing could start a stop
    assert matcher.feed(" then ST") == (" then ", False, None)
    assert matcher.feed("ARE") == ("STARE", False, None)  # "ST" did not become "STOP"
    assert matcher.feed("S") == ("", False, None)
    assert matcher.flush() == "S"  # at the end the tail that never stopped comes out


def test_after_a_stop_nothing_more_is_emitted():
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("aEND b") == ("a", True, "END")
    assert matcher.feed("more") == ("", True, "END")
    assert matcher.flush() == ""


def test_unicode_stops_and_text():
    assert run(["。答案"], ["思考完毕。", "答", "案是 42"])[:2] == ("思考完毕", "。答案")
    assert run(["🛑"], ["go 🚦", "🛑 no"])[:2] == ("go 🚦", "🛑")
    assert run(["é"], ["caf", "é au lait"], include=True)[:2] == ("café", "é")
    assert run(["ü"], ["nothing to see"])[:2] == ("nothing to see", None)


def test_empty_and_duplicate_stops_are_ignored():
    assert run(["", "x", "x"], ["abc", "xyz"])[:2] == ("abc", "x")
    assert run([""], ["abc"])[:2] == ("abc", None)


def random_chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(6, len(text) - 1))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def word(rng: random.Random, alphabet: str, longest: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, longest)))


@pytest.mark.parametrize("include", [False, True])
def test_any_chunking_gives_the_whole_text_result(include):
    rng = random.Random(7)
    alphabet = "abcé🙂"
    for _ in range(1500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        stops = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))
        ]
        got, matched, emits = run(stops, random_chunks(text, rng), include)
        assert (got, matched) == reference(stops, text, include), (stops, text)
