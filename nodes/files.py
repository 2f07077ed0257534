"""Where the nodes write files: inside one folder (models/lazy_gates), under a name the prompt chooses.

A prompt is untrusted input on a shared server, so its `filename_prefix` is checked before any work
(at queue time and again in execute), the target is resolved with symlinks followed and must stay inside
the folder, and the file is created exclusively: a name that exists is never overwritten, the counter moves
on instead."""

import os
import re

MAX_PREFIX = 100             # characters; with "_00000.safetensors" a name stays far below the 255 bytes of a path part
_FORBIDDEN = set('\\:*?"<>|')  # path separators and names Windows refuses


def check_prefix(prefix, name="filename_prefix"):
    """Raises ValueError unless prefix is a relative name like 'gates' or 'sub/gates'; None (a link) passes."""
    if prefix is None:
        return
    fix = f"set {name} to a plain name such as 'lazydit_gates' (a subfolder is fine: 'mine/gates')"
    if not isinstance(prefix, str) or not prefix.strip():
        raise ValueError(f"{name} is empty; {fix}")
    shown = repr(prefix) if len(prefix) <= 40 else repr(prefix[:40]) + "..."
    if len(prefix) > MAX_PREFIX:
        raise ValueError(f"{name} {shown} is {len(prefix)} characters long, more than {MAX_PREFIX}; {fix}")
    if any(ord(c) < 32 or c in _FORBIDDEN for c in prefix):
        raise ValueError(f"{name} {shown} holds a control character or one of \\ : * ? \" < > |; {fix}")
    if prefix.startswith("/") or os.path.isabs(prefix):
        raise ValueError(f"{name} {shown} is an absolute path: files are saved inside models/lazy_gates only; "
                         f"{fix}")
    if any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError(f"{name} {shown} leaves or skips a folder ('..', '.' or '//'): files are saved inside "
                         f"models/lazy_gates only; {fix}")


def create_new(folder, prefix, data, suffix=".safetensors"):
    """Writes `data` (bytes) to folder/prefix_NNNNN{suffix}, the next free number, never overwriting a file.
    Returns the path written."""
    check_prefix(prefix)
    root = os.path.realpath(folder)
    sub, stem = os.path.split(prefix)
    target = os.path.realpath(os.path.join(root, sub))
    if os.path.commonpath([root, target]) != root:        # a symlinked subfolder pointing outside
        raise ValueError(f"filename_prefix {prefix!r} resolves outside {folder} (a link in the folder points "
                         f"elsewhere); choose another subfolder")
    os.makedirs(target, exist_ok=True)
    taken = re.compile(re.escape(stem) + r"_(\d{5,})" + re.escape(suffix) + "$")
    numbers = [int(m.group(1)) for m in map(taken.match, os.listdir(target)) if m]
    n = max(numbers, default=-1) + 1
    while True:
        path = os.path.join(target, f"{stem}_{n:05d}{suffix}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)   # fails on any existing entry, links too
        except FileExistsError:
            n += 1
            continue
        break
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(path)
        raise
    return path
