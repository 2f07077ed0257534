"""The real ComfyUI (the one scripts/setup.sh installs), started in-process and headless: used by the demo,
the benchmarks and the tests. Runs API-format workflows through ComfyUI's own PromptExecutor."""

import asyncio
import os
import sys
import uuid

import checkout  # noqa: F401  (binds `lazydit` to this checkout)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY = os.path.join(ROOT, ".comfyui", "ComfyUI")


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


def make_base(base):
    """A ComfyUI base directory with this pack linked in as custom_nodes/lazydit and empty model folders."""
    os.makedirs(os.path.join(base, "custom_nodes"), exist_ok=True)
    link = os.path.join(base, "custom_nodes", "lazydit")
    if not os.path.lexists(link):
        os.symlink(ROOT, link)
    for folder in ("checkpoints", "diffusion_models", "lazy_gates", "vae", "output"):
        os.makedirs(os.path.join(base, "models" if folder != "output" else "", folder), exist_ok=True)
    return base


class Comfy:
    """ComfyUI imported in-process on the CPU with every node (core and this pack) registered."""

    def __init__(self, base, extra_args=()):
        self.base = make_base(base)
        self.output = os.path.join(self.base, "output")
        sys.path.insert(0, COMFY)
        sys.argv = ["main.py", "--cpu", "--base-directory", self.base, "--disable-api-nodes", *extra_args]
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

    def run(self, prompt):
        """Validates and executes an API-format prompt; returns the history outputs by node id."""
        pid = str(uuid.uuid4())
        valid = asyncio.run(self.execution.validate_prompt(pid, prompt, None))
        if not valid[0]:
            raise WorkflowError(f"invalid workflow: {valid[1]} {valid[3]}")
        ex = self.execution.PromptExecutor(_Server(), cache_type=self.execution.CacheType.NONE,
                                           cache_args={"lru": 0, "ram": 0})
        ex.execute(prompt, pid, {}, valid[2])
        if not ex.success:
            errors = [m[1] for m in ex.status_messages if m[0] == "execution_error"]
            if errors:
                raise WorkflowError(f"{errors[-1].get('exception_type')}: {errors[-1].get('exception_message')}")
            raise WorkflowError(str(ex.status_messages))
        return ex.history_result["outputs"]
