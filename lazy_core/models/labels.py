"""Class labels written as text, one grammar for the DiT Class Label node, the Train node and the CLIs.

Comma-separated entries: an index ("207"), a range ("0-9"), "all", or a class name where the model has
names (the demo model's Fashion-MNIST classes). Anything after a colon is a comment ("207: golden
retriever"). Only ASCII digits count: "²".isdigit() is True in Python, but it is no class index.
"""

import re

MAX_LABELS = 4096            # one image per label: far more than any latent batch holds
MAX_TEXT = 65536             # characters; bounds the work before a single entry is read
ENTRY = re.compile(r"([0-9]+)\s*(?:-\s*([0-9]+))?")


class LabelError(ValueError):
    """Label text that names no usable class; the message names the entry, the valid range and the fix."""


def _short(text, limit=40):
    """The text as the error shows it: quoted and cut, so that a huge input gives a short message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _span(part, num_classes, names):
    """(first, last) class index of one entry, checked against the model's class count before expanding."""
    index = {name.lower(): i for i, name in enumerate(names)}
    low = part.lower()
    if low == "all":
        return 0, num_classes - 1
    if low in index:
        return index[low], index[low]
    m = ENTRY.fullmatch(part.split(":", 1)[0].strip())
    if m is None:
        hint = f", a class name ({', '.join(names)})" if names else ""
        raise LabelError(f"labels: entry {_short(part)} is not a class index, a range a-b{hint} or 'all'; "
                         f"write e.g. '207', '0-9' or 'all'")
    first = int(m[1])
    last = first if m[2] is None else int(m[2])
    if first > last:
        raise LabelError(f"labels: range {_short(part)} runs backwards; write it low to high, e.g. '{last}-{first}'")
    if last >= num_classes:
        raise LabelError(f"labels: {_short(part)} is outside this model's {num_classes} classes; "
                         f"write indices in 0..{num_classes - 1}")
    return first, last


def parse_labels(text, num_classes, names=()):
    """Label text -> list of class indices in 0..num_classes-1, in the order written. Every entry is
    checked, and the labels counted, before any range is expanded. names: class names by index."""
    text = str(text)
    if len(text) > MAX_TEXT:
        raise LabelError(f"labels: {_short(text)} is longer than {MAX_TEXT} characters; write ranges ('0-9')")
    spans, total = [], 0
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, last = _span(part, num_classes, names)
        total += last - first + 1
        if total > MAX_LABELS:
            raise LabelError(f"labels: {_short(text)} asks for more than {MAX_LABELS} labels (one image each); "
                             f"write fewer entries")
        spans.append((first, last))
    if not spans:
        raise LabelError("labels is empty; write class indices ('207'), a range ('0-9') or 'all'")
    return [i for first, last in spans for i in range(first, last + 1)]
