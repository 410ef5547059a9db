"""Two greedy runs of one model compared token for token, allowing a flip only at a tie of the logits."""

# bf16 logits of nano's size are multiples of 1/16 or 1/8: kernels of another shape (a batch, a
# verification of drafts) may round a logit one step either way, so a flip is legitimate only
# where the two best tokens are within this many nats of each other
TIE = 0.125


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where the two token lists differ, or None when they are the same."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def assert_same_greedy(a, b) -> None:
    """Same tokens, text and finish; or the same up to a position where each run's logprobs (asked
    with logprobs >= 2) show the other's token within TIE of its own."""
    n = first_difference(a.token_ids, b.token_ids)
    if n is None:
        assert (a.text, a.finish_reason, a.stop_reason) == (b.text, b.finish_reason, b.stop_reason)
    else:
        assert n < min(len(a.token_ids), len(b.token_ids)), f"one run stopped early at token {n}"
        for run, own, other in ((a, a.token_ids[n], b.token_ids[n]), (b, b.token_ids[n], a.token_ids[n])):
            top = run.logprobs[n]
            assert other in top, f"token {n}: {other} is not a runner-up of {own} ({top})"
            assert top[own].logprob - top[other].logprob <= TIE, f"token {n}: no tie ({top})"
    # runner-ups may tie among themselves, so only the chosen tokens' logprobs are compared
    for token, x, y in zip(a.token_ids[:n], a.logprobs[:n], b.logprobs[:n]):
        assert abs(x[token].logprob - y[token].logprob) <= TIE, (token, x, y)
