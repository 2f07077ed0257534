"""Input checks for the nodes, each blamed on the one input it is about.

How ComfyUI attributes a refusal (execution.validate_inputs, the same in 0.3.75 and 0.33.0):
- an input that is *not* an argument of the node's `validate_inputs` gets ComfyUI's own checks: conversion to
  its type, min/max, and (for a list-typed combo) the option list. Each failure is one error naming that input.
- when `validate_inputs` returns anything but True, ComfyUI repeats its message once per argument of the
  signature that the prompt holds, each blamed on that argument. One bad value then marks them all red.

So the pack lets ComfyUI check every widget it can, and makes it able to check the two it cannot:
- NaN passes a min/max check (every comparison with NaN is false). A FLOAT input's bounds are `Bound`s, which
  count NaN as outside, so ComfyUI's own range check refuses it ("Value nan smaller than min of 0.0").
- ComfyUI 0.3.75 checks only list-typed combos and skips V3 ones (type "COMBO"); since PR #11345 (ComfyUI
  0.8, which also made DynamicCombo public) it checks both but breaks on a list type. `Combo` gives the
  list form on the older releases and the V3 form on the newer, so either way ComfyUI checks the value.
- A node's `validate_inputs` takes only its one free-text input (a value list, a file prefix), parsed by the
  node's own check (`answer`), so its message is blamed on that input alone.
- What validation cannot see, it cannot refuse: values that arrive through a link (validate_inputs sees
  them as None) and relations between two inputs (start after end) are checked in execute before any work
  (`check_inputs`, `check_range`), with a message that names the input.
"""

import math

from comfy_api.latest import io

CORE_CHECKS_V3_COMBOS = hasattr(io, "DynamicCombo")   # ComfyUI >= 0.8 (PR #11345)


def short(value, limit=60):
    """repr(value), cut to `limit` characters: messages quote a long value by its start only."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


class Bound(float):
    """A FLOAT input's min or max that NaN falls outside of. ComfyUI checks `value < min` and `value > max`;
    as Bound is a float subclass, Python asks its reflected comparison first, which says NaN is out."""

    __slots__ = ()

    def __gt__(self, other):                  # `other < self`: ComfyUI's min check
        return other != other or float.__gt__(self, other)

    def __lt__(self, other):                  # `other > self`: its max check
        return other != other or float.__lt__(self, other)


def Float(id, *, min, max, **kwargs):
    """io.Float.Input whose bounds refuse NaN in ComfyUI's own check."""
    return io.Float.Input(id, min=Bound(min), max=Bound(max), **kwargs)


class _ListedCombo(io.Combo.Input):
    """A combo typed by its option list (V1's form), which ComfyUI before 0.8 checks the value against."""

    def get_io_type(self):
        return list(self.options)


def Combo(id, options, **kwargs):
    """io.Combo.Input that ComfyUI itself checks, on 0.3.75 as on 0.8 and later."""
    kind = io.Combo.Input if CORE_CHECKS_V3_COMBOS else _ListedCombo
    return kind(id, options=list(options), **kwargs)


def check_number(name, value, low, high, meaning=""):
    """Raises ValueError unless value is a finite number in [low, high]; None (a link) passes."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        hint = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} = {short(value)} is not a number in {low}..{high}{hint}; set {name} to a "
                         f"value in that range")


def check_choice(name, value, options):
    """Raises ValueError unless value is one of options; None (a link, or an optional input left out) passes."""
    if value is not None and value not in options:
        listed = ", ".join(repr(o) for o in list(options)[:8]) + (", ..." if len(options) > 8 else "")
        raise ValueError(f"{name} = {short(value)} is not one of {listed}: pick one of those (the workflow may "
                         f"come from another version of the pack, or the file is not in its folder)")


def check_inputs(node, **values):
    """Checks widget values against `node`'s schema (range and finiteness of numbers, combo options), as
    ComfyUI does at queue time, for values that came through a link. Raises ValueError naming the input."""
    specs = {i.id: i for i in node.define_schema().inputs}
    for name, value in values.items():
        spec = specs[name]
        if isinstance(spec, io.Combo.Input):
            check_choice(name, value, spec.options)
        elif isinstance(spec, (io.Float.Input, io.Int.Input)):
            check_number(name, value, _plain(spec.min, -math.inf), _plain(spec.max, math.inf))


def _plain(bound, missing):
    return missing if bound is None else float(bound) if isinstance(bound, float) else bound


def answer(check, *args):
    """What validate_inputs returns: True, or the check's message (ComfyUI shows it with the input)."""
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
