"""Math answers compared by meaning with math-verify: `\\frac{1}{2}`, `0.5` and `1/2` agree."""


def _parsed(answer: str):
    from math_verify import parse  # sympy behind it takes a second to import: only when scoring

    # wrapped in $...$ so math-verify reads it as LaTeX (bare `\sqrt{2}/2` parses to nothing)
    return parse(f"${answer}$") or parse(answer)


def math_equal(predicted: str | None, gold: str) -> bool:
    """True when the predicted answer is mathematically the gold one."""
    if predicted is None:
        return False
    if predicted.strip() == gold.strip():
        return True
    from math_verify import verify

    gold_parsed, predicted_parsed = _parsed(gold), _parsed(predicted)
    return bool(gold_parsed and predicted_parsed and verify(gold_parsed, predicted_parsed))
