"""Fixtures: the real ComfyUI (0.3.75, or the tree scripts/test.sh --comfyui names) in-process
(scripts/comfy_headless.py) in a temporary base directory, and its HTTP server with the pack installed as
users install it. Tests of lazy_core never request them, so they run without ComfyUI."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load("checkout")  # binds `lazydit` to this checkout before any test module imports it
_load("comfy_tree")  # which ComfyUI folder: .comfyui/ComfyUI, or $LAZYDIT_COMFYUI (scripts/test.sh --comfyui)
_load("quiet_optional")
headless = _load("comfy_headless")


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI imported in-process on the CPU, every node (core + this pack) registered."""
    return headless.Comfy(str(tmp_path_factory.mktemp("comfy_base")))


@pytest.fixture()
def clean_output(comfy):
    shutil.rmtree(comfy.output, ignore_errors=True)
    os.makedirs(comfy.output)
    return comfy.output


@pytest.fixture(scope="session")
def counted(comfy):
    """counted(model, run) -> (run(), model calls made, progress updates (value, total))."""
    return _counted


def _counted(model, run):
    """(run's result, model calls made, progress updates (value, total)): calls are counted at the first
    block, which every model call reaches however it is made."""
    import comfy.utils

    first = model.model.diffusion_model.blocks[0]
    calls, updates = [0], []
    handle = first.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value,
                                                                                                         total)))
    try:
        result = run()
    finally:
        handle.remove()
        comfy.utils.set_progress_bar_global_hook(None)
    text = result[-1] if isinstance(result, tuple) and isinstance(result[-1], str) else ""
    if text.startswith("saved "):          # gate files the node wrote: later tests list the folder
        import folder_paths
        os.remove(os.path.join(folder_paths.base_path, text[len("saved "):].split(";")[0]))
    return result, calls[0], updates


@pytest.fixture(scope="session")
def runtime():
    """scripts/comfy_headless.py as a module (paths, base-directory layout)."""
    return headless


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def front_end_root():
    """The real front end's files (pip comfyui-frontend-package, which scripts/setup.sh installs), or None."""
    spec = importlib.util.find_spec("comfyui_frontend_package")
    return os.path.join(list(spec.submodule_search_locations)[0], "static") if spec else None


class Server:
    """ComfyUI's main.py (scripts/comfy_server.py) on a free loopback port, the pack in custom_nodes."""

    def __init__(self, base, web=None):
        """`web`: a folder to serve as the front end; None serves the installed comfyui-frontend-package."""
        self.base, self.port = base, free_port()
        self.web = web or front_end_root()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base, "server.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "scripts", "comfy_server.py"), "--cpu", "--listen", "127.0.0.1",
             "--port", str(self.port), "--base-directory", base, *(["--front-end-root", web] if web else []),
             "--database-url", "sqlite:///:memory:", "--disable-api-nodes", "--disable-auto-launch"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while True:
            try:
                if "LazyDiT_ApplyGates" in get_json(f"{self.url}/object_info"):
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ComfyUI did not start (exit {self.proc.poll()}):\n" + self.read_log()[-3000:])
            time.sleep(0.5)

    def get(self, path):
        return get_json(f"{self.url}{path}")

    def post(self, path, payload):
        """POST of a JSON payload: (status, answer)."""
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
        return status, json.loads(body) if body.strip() else None

    def wait(self, prompt_id, timeout=300):
        """The history entry of a queued prompt once it has finished."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = get_json(f"{self.url}/history/{prompt_id}")
            if history.get(prompt_id, {}).get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def startup_log(self):
        """What the server printed up to serving its first request."""
        text = self.read_log()
        end = text.find("Starting server")
        assert end >= 0, f"no 'Starting server' in the ComfyUI log:\n{text[-3000:]}"
        return text[:end]

    def read_log(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """ComfyUI's HTTP server with the real front end (an empty web root if it is not installed) and this
    pack copied to custom_nodes/ComfyUI-LazyDiT, as a user's clone; stopped when the session ends."""
    base = headless.make_base(str(tmp_path_factory.mktemp("http_base")), link=False)
    headless.install_copy(base)
    # Without the front end package ComfyUI exits at start-up unless it is given a folder to serve.
    srv = Server(base, None if front_end_root() else str(tmp_path_factory.mktemp("empty_web")))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
