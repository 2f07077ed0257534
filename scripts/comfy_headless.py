"""The real ComfyUI (the one scripts/setup.sh installs), started in-process and headless: used by the demo,
the benchmarks and the tests. Runs API-format workflows through ComfyUI's own PromptExecutor."""

import asyncio
import inspect
import os
import re
import shutil
import subprocess
import sys
import uuid

import checkout  # noqa: F401  (binds `lazydit` to this checkout)
import comfy_tree
import quiet_optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY = comfy_tree.COMFY            # .comfyui/ComfyUI (0.3.75), or the tree $LAZYDIT_COMFYUI names
PACK_FOLDER = "ComfyUI-LazyDiT"     # the folder name users clone the repository into


def cache_args(execution_source):
    """PromptExecutor's cache_args with every key the given execution.py reads, each 0 (no output cache).

    ComfyUI 0.3.75 reads "lru" and "ram"; newer releases also read "ram_inactive" (KeyError without it). The
    keys are taken from the source rather than from a table of versions, so the next key is found too."""
    keys = set(re.findall(r"cache_args(?:\[|\.get\()\s*[\"'](\w+)[\"']", execution_source))
    if not keys:
        raise RuntimeError("this ComfyUI's execution.py reads no cache_args keys; its PromptExecutor changed shape")
    return dict.fromkeys(sorted(keys), 0)


class WorkflowError(RuntimeError):
    """A workflow that ComfyUI refused or that failed while running."""


class _Server:
    """What PromptExecutor touches of the server."""

    client_id = None
    last_node_id = None
    sockets_metadata = {}

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


def make_base(base, link=True):
    """A ComfyUI base directory with empty model folders and (with `link`) this checkout linked in as
    custom_nodes/lazydit."""
    os.makedirs(os.path.join(base, "custom_nodes"), exist_ok=True)
    path = os.path.join(base, "custom_nodes", "lazydit")
    if link and not os.path.lexists(path):
        os.symlink(ROOT, path)
    for folder in ("checkpoints", "diffusion_models", "lazy_gates", "vae", "output"):
        os.makedirs(os.path.join(base, "models" if folder != "output" else "", folder), exist_ok=True)
    return base


def install_copy(base):
    """This checkout's files (tracked and new, not ignored) copied to BASE/custom_nodes/ComfyUI-LazyDiT, as a
    user's `git clone` into custom_nodes would lay them out; returns the copy's folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    dest = os.path.join(base, "custom_nodes", PACK_FOLDER)
    for name in filter(None, listed):
        if os.path.isfile(os.path.join(ROOT, name)):      # a file deleted but not yet staged is still listed
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))
    return dest


class Comfy:
    """ComfyUI imported in-process on the CPU with every node (core and this pack) registered."""

    def __init__(self, base, extra_args=(), cpu=True):
        """`cpu`: run on the CPU (--cpu); False lets ComfyUI take the GPU it finds."""
        quiet_optional.install()
        self.base = make_base(base)
        self.output = os.path.join(self.base, "output")
        sys.path.insert(0, COMFY)
        sys.argv = ["main.py", *(["--cpu"] if cpu else []), "--base-directory", self.base, "--disable-api-nodes",
                    *extra_args]
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses the arguments; must precede comfy.model_management)
        import execution
        if sys.path[0] != COMFY:                  # ComfyUI's own `utils` package must win over comfy/utils.py
            sys.path.insert(0, COMFY)
        # Order matters: ComfyUI's `utils` package before `import nodes`, which puts comfy/ first on sys.path.
        import utils.extra_config  # noqa: F401, I001
        import nodes
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        if "LazyDiT_ApplyGates" not in nodes.NODE_CLASS_MAPPINGS:
            raise RuntimeError("the LazyDiT pack did not load into ComfyUI; see 'IMPORT FAILED' in the log above")
        self.nodes, self.execution = nodes, execution
        self.cache_args = cache_args(inspect.getsource(execution))

    def run(self, prompt):
        """Validates and executes an API-format prompt; returns the history outputs by node id."""
        pid = str(uuid.uuid4())
        valid = asyncio.run(self.execution.validate_prompt(pid, prompt, None))
        if not valid[0]:
            raise WorkflowError(f"invalid workflow: {valid[1]} {valid[3]}")
        ex = self.execution.PromptExecutor(_Server(), cache_type=self.execution.CacheType.NONE,
                                           cache_args=self.cache_args)
        ex.execute(prompt, pid, {}, valid[2])
        if not ex.success:
            errors = [m[1] for m in ex.status_messages if m[0] == "execution_error"]
            if errors:
                raise WorkflowError(f"{errors[-1].get('exception_type')}: {errors[-1].get('exception_message')}")
            raise WorkflowError(str(ex.status_messages))
        return ex.history_result["outputs"]
