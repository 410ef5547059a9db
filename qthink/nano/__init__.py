"""qthink-nano: a tiny Qwen3 model trained on synthetic 2507-format conversations."""


def ensure_nano(rebuild: bool = False):
    """The qthink-nano checkpoint folder (see qthink.nano.build)."""
    from qthink.nano.build import ensure_nano as build

    return build(rebuild)
