"""Step segmentation and labelling of thinking chains, on hand-written thinking texts."""

import time

import pytest

from qthink.viewer.segment import (
    analyse,
    answer_candidates,
    find_answer_in_thinking,
    label_step,
    segment_thinking,
    token_index_at,
)

ARITHMETIC_CHAIN = """Okay, the user is asking what 17 times 24 is. Let me work it out.

17 * 24 = 17 * 20 + 17 * 4 = 340 + 68 = 408.

Wait, let me double-check that: 24 * 17 = 240 + 168 = 408. Yes.

Hmm, wait. Did I read the question right? It says 17 times 24, so yes.

Alternatively, 17 * 25 = 425, and 425 - 17 = 408.

So the answer is 408.
"""

BACKTRACKING_CHAIN = """First, I need the number of primes below 20.

The primes are 2, 3, 5, 7, 11, 13, 17, 19, 21.

Wait, 21 = 3 * 7, so it is not prime. That leaves 8 primes.

Let me verify by listing again: 2, 3, 5, 7, 11, 13, 17, 19. That is 8.

Therefore there are 8 primes below 20."""


def test_arithmetic_chain_steps_and_labels():
    steps = segment_thinking(ARITHMETIC_CHAIN)
    assert [s.label for s in steps] == [
        "plan",
        "compute",
        "verify",
        "backtrack",
        "explore",
        "conclude",
    ]
    assert steps[2].cue == "let me double-check"
    assert steps[4].cue == "Alternatively"


def test_backtracking_chain_labels():
    labels = [s.label for s in segment_thinking(BACKTRACKING_CHAIN)]
    assert labels == ["plan", "reason", "backtrack", "verify", "conclude"]


def test_step_offsets_point_into_the_text():
    for step in segment_thinking(ARITHMETIC_CHAIN):
        assert ARITHMETIC_CHAIN[step.start : step.end] == step.text
        assert step.text == step.text.strip()


@pytest.mark.parametrize(
    ("opening", "label"),
    [
        ("Let me double-check the sum: 3 + 4 = 7.", "verify"),
        ("So let me check the edge case where n = 0.", "verify"),
        ("Just to be sure, I'll recount the letters.", "verify"),
        ("But wait, the problem says strictly greater.", "backtrack"),
        ("Hold on, that contradicts the second clue.", "backtrack"),
        ("Actually, the formula needs n - 1, not n.", "backtrack"),
        ("Another approach: use the complement.", "explore"),
        ("What if the list is empty?", "explore"),
        ("Therefore, x = 4.", "conclude"),
        ("Putting it all together, the total is 12 apples.", "conclude"),
        ("So it is 12.", "conclude"),
        ("Hmm, so that's 7 in all.", "conclude"),
        ("It is raining in the story, which matters later.", "reason"),
        ("I need to find the smallest such n.", "plan"),
        ("The question asks for the area of the triangle.", "plan"),
        ("Let me compute the derivative of x^3.", "compute"),
        ("Next, multiply both sides by 2.", "compute"),
        ("Then 12 / 4 = 3.", "compute"),
        ("The triangle has two equal sides.", "reason"),
        ("Waiting times are exponential here.", "reason"),
    ],
)
def test_label_of_an_opening_sentence(opening, label):
    assert label_step(opening)[0] == label


def test_cue_deep_in_a_paragraph_does_not_relabel_it():
    body = "The triangle has two equal sides, and the angles opposite them match. " * 2
    assert label_step(body + "Wait, no.")[0] == "reason"


def test_paragraphs_split_on_blank_lines_only():
    text = "Line one of a thought\ncontinues here.\n\n  \n\nA second thought.\r\n\r\nA third."
    steps = segment_thinking(text)
    assert [s.text for s in steps] == [
        "Line one of a thought\ncontinues here.",
        "A second thought.",
        "A third.",
    ]


def test_empty_thinking_has_no_steps():
    assert segment_thinking("") == []
    assert segment_thinking("\n\n  \n") == []


def test_answer_candidates_prefer_boxed_then_last_number():
    assert answer_candidates(r"The result is \boxed{\frac{3}{4}}, about 0.75.") == [
        r"\frac{3}{4}",
        "0.75",
    ]
    assert answer_candidates("There are 8 primes below 20.") == ["20"]
    assert answer_candidates("There are **8 primes** below 20.") == ["8 primes", "20"]
    assert answer_candidates("Paris.") == ["Paris"]
    assert answer_candidates("A long answer with no number in it at all, just words and words.") == []


def test_answer_found_where_first_written():
    at = find_answer_in_thinking(ARITHMETIC_CHAIN, r"17 × 24 = \boxed{408}")
    assert at == ARITHMETIC_CHAIN.index("408")


def test_answer_match_respects_number_boundaries():
    thinking = "Maybe 4080 or 1408 or 408.5, no: it is 408."
    assert find_answer_in_thinking(thinking, "408") == thinking.rindex("408")
    assert find_answer_in_thinking("nothing here", "408") is None


def test_token_index_at():
    tokens = ["ab", "c", "", "def"]
    assert [token_index_at(tokens, i) for i in range(6)] == [0, 0, 1, 3, 3, 3]


def test_analyse_with_tokens_tiles_them_into_steps():
    tokens = [ARITHMETIC_CHAIN[i : i + 5] for i in range(0, len(ARITHMETIC_CHAIN), 5)]
    result = analyse(tokens=tokens, answer="408")
    steps = result["steps"]
    assert steps[0]["token_start"] == 0 and steps[-1]["token_end"] == len(tokens)
    for before, after in zip(steps, steps[1:], strict=False):
        assert before["token_end"] == after["token_start"]
    assert result["answer_step"] == 1
    assert "408" in "".join(tokens[result["answer_token"] : result["answer_token"] + 2])


def test_analyse_text_without_answer():
    result = analyse("Just one thought.", answer="")
    assert len(result["steps"]) == 1
    assert result["answer_at"] is None and result["answer_step"] is None
    assert "token_start" not in result["steps"][0]


def test_a_full_context_trace_with_its_tokens_segments_in_seconds():
    """262,144 tokens of thinking (about a million characters): token ranges are found by
    binary search, not by walking the tokens for every step (that took minutes)."""
    tokens = [ARITHMETIC_CHAIN[i : i + 4] for i in range(0, len(ARITHMETIC_CHAIN), 4)]
    tokens = tokens * (262_144 // len(tokens))
    started = time.process_time()
    result = analyse(tokens=tokens, answer="408")
    assert time.process_time() - started < 10
    assert result["steps"][-1]["token_end"] == len(tokens)
