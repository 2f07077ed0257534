"""Input checks for the nodes. ComfyUI's own checks let NaN through min/max (every comparison with NaN is
false) and, for V3 nodes in 0.3.75, do not check combo values. A node runs its checks in validate_inputs,
so a bad widget value is refused when the prompt is queued, and again in execute, for values that arrive
through a link (validate_inputs sees those as None)."""

import math


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_number(name, value, low, high, meaning=""):
    """Raises ValueError unless value is a finite number in [low, high]; None (a link) passes."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        hint = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} = {_short(value)} is not a number in {low}..{high}{hint}; set {name} to a "
                         f"value in that range")


def check_choice(name, value, options):
    """Raises ValueError unless value is one of options; None (a link, or an optional input left out) passes."""
    if value is not None and value not in options:
        listed = ", ".join(repr(o) for o in list(options)[:8]) + (", ..." if len(options) > 8 else "")
        raise ValueError(f"{name} = {_short(value)} is not one of {listed}: pick one of those (the workflow may "
                         f"come from another version of the pack, or the file is not in its folder)")


def answer(check, *args):
    """What validate_inputs returns: True, or the check's message (ComfyUI shows it with the node)."""
    try:
        check(*args)
    except ValueError as err:
        return str(err)
    return True


def check_range(start_percent, end_percent):
    """The part of sampling a cache may work in: 0 <= start <= end <= 1 (None, a link, passes)."""
    check_number("start_percent", start_percent, 0.0, 1.0, "where in the schedule caching may begin")
    check_number("end_percent", end_percent, 0.0, 1.0, "where in the schedule caching must stop")
    if start_percent is not None and end_percent is not None and start_percent > end_percent:
        raise ValueError(f"start_percent {start_percent} is after end_percent {end_percent}: set start_percent "
                         f"at or before end_percent (0 = the first step, 1 = the last)")
