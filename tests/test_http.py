"""The pack through ComfyUI's real HTTP server (main.py --cpu on a free loopback port; the `server` fixture
in conftest.py, with the pack installed in custom_nodes/ComfyUI-LazyDiT)."""

import json
import os
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.http
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, "example_workflows", "api", "lazydit_demo_fashion.json")


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post(url, payload):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(url, prompt_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = get(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.5)
    raise TimeoutError(prompt_id)


def assert_draws_demo_images(url, base, prompt):
    """Queues the demo workflow and checks that its 10 images land in the output folder."""
    status, body = post(f"{url}/prompt", {"prompt": prompt, "client_id": "test"})
    assert status == 200, body
    done = wait_for(url, body["prompt_id"])
    assert done["status"]["status_str"] == "success", done["status"]
    images = done["outputs"]["10"]["images"]
    assert len(images) == 10
    assert all(os.path.exists(os.path.join(base, "output", i["subfolder"], i["filename"])) for i in images)


def test_demo_workflow_over_http(server):
    """POST /prompt runs the demo workflow (lazy gates + report) and the images land in the output folder;
    a bad workflow is rejected with the reason and the server keeps serving."""
    url, base = server.url, server.base
    prompt = json.load(open(WORKFLOW))
    prompt["7"]["inputs"]["steps"] = 6
    assert_draws_demo_images(url, base, prompt)

    for name, reason in (("missing.safetensors", "missing.safetensors' is not in models/checkpoints"),
                         ("broken.pt", "broken.pt cannot be read")):
        if name == "broken.pt":
            with open(os.path.join(base, "models", "checkpoints", "broken.pt"), "wb") as f:
                f.write(b"this is not a checkpoint")
            time.sleep(1.1)    # ComfyUI caches folder listings by mtime
        prompt["1"]["inputs"]["ckpt_name"] = name
        status, body = post(f"{url}/prompt", {"prompt": prompt, "client_id": "test"})
        if status == 400:                      # refused at validation: the reason names the input
            assert "ckpt_name" in json.dumps(body)
            continue
        done = wait_for(url, body["prompt_id"])
        assert done["status"]["status_str"] == "error"
        assert reason in json.dumps(done["status"]["messages"]), json.dumps(done["status"]["messages"])[-800:]
    assert "LazyDiT_DiTLoader" in get(f"{url}/object_info"), "the server must keep serving"


def test_worst_inputs_over_http_then_a_valid_prompt(server):
    """A huge label range, NaN laziness and a NaN gate file, queued over HTTP, each fail with a short error
    that names the input and the value; the server keeps serving, and the valid prompt queued after them
    draws its images."""
    import torch
    from lazydit.lazy_core.engine.gates import GateBank
    from safetensors.torch import save_file

    url, base = server.url, server.base
    good = json.load(open(WORKFLOW))
    good["7"]["inputs"]["steps"] = 3
    bank = GateBank.load(os.path.join(ROOT, "weights", "dit_demo_fashion_gates.safetensors"))
    tensors = {"weight": torch.full_like(bank.weight, float("nan")), "bias": bank.bias.detach(),
               "prior": bank.prior, "trained": bank.trained.to(torch.uint8)}
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(base, "models", "lazy_gates", "nan_gates.safetensors"), metadata=bank.info.to_metadata())
    time.sleep(1.1)                            # ComfyUI caches folder listings by mtime
    worst = [("4", "labels", "0-20000000", "labels: '0-20000000' is outside this model's 10 classes"),
             ("3", "laziness", float("nan"), "laziness = nan is not a number in 0.0..1.0"),
             ("2", "gate_name", "nan_gates.safetensors", "nan_gates.safetensors: gate weight holds NaN or inf")]
    for node, name, value, message in worst:
        prompt = json.loads(json.dumps(good))
        prompt[node]["inputs"][name] = value
        status, body = post(f"{url}/prompt", {"prompt": prompt, "client_id": "test"})
        if status == 400:                      # refused at validation, nothing queued
            texts = [e["details"] for n in body["node_errors"].values() for e in n["errors"]]
        else:
            done = wait_for(url, body["prompt_id"])
            assert done["status"]["status_str"] == "error", done["status"]
            assert "10" not in done["outputs"], "the sampler must not have run"
            texts = [m[1]["exception_message"] for m in done["status"]["messages"] if m[0] == "execution_error"]
        assert texts and all(message in t and len(t) < 1024 for t in texts), texts
    assert_draws_demo_images(url, base, good)
