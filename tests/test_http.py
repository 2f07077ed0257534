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
             ("3", "laziness", float("nan"), "Value nan smaller than min of 0.0: laziness"),
             ("2", "gate_name", "nan_gates.safetensors", "nan_gates.safetensors: gate weight holds NaN or inf")]
    for node, name, value, message in worst:
        prompt = json.loads(json.dumps(good))
        prompt[node]["inputs"][name] = value
        status, body = post(f"{url}/prompt", {"prompt": prompt, "client_id": "test"})
        if status == 400:                      # refused at validation, nothing queued
            texts = [f"{e['message']}: {e['details']}" for n in body["node_errors"].values() for e in n["errors"]]
        else:
            done = wait_for(url, body["prompt_id"])
            assert done["status"]["status_str"] == "error", done["status"]
            assert "10" not in done["outputs"], "the sampler must not have run"
            texts = [m[1]["exception_message"] for m in done["status"]["messages"] if m[0] == "execution_error"]
        assert texts and all(message in t and len(t) < 1024 for t in texts), texts
    assert_draws_demo_images(url, base, good)


SWEEP = os.path.join(ROOT, "example_workflows", "api", "lazydit_sweep_fashion.json")
DYDIT = "dydit_demo_fashion.safetensors (built in)"


def queue(url, prompt):
    """POST /prompt: (status, body, validation errors as [(node, input_name, text)])."""
    status, body = post(f"{url}/prompt", {"prompt": prompt, "client_id": "test"})
    errors = [(node, e["extra_info"].get("input_name"), f"{e['message']}: {e['details']}")
              for node, n in body.get("node_errors", {}).items() for e in n["errors"]]
    return status, body, errors


def execution_error(url, body):
    """The exception message of a queued prompt that failed while running."""
    done = wait_for(url, body["prompt_id"])
    assert done["status"]["status_str"] == "error", done["status"]
    return done, [m[1]["exception_message"] for m in done["status"]["messages"] if m[0] == "execution_error"]


def test_worst_sweep_and_node_inputs_over_http_then_a_valid_prompt(server):
    """Over the real server: every bad widget value of the issue (Sweep steps, cfg, sampler, scheduler, seed,
    step range, a 10 KB value list; NaN in Apply, Δ-DiT, FORA, Train, DyDiT Width; off-list loader values) is
    refused at queue time with exactly one short error on that input. What only the run can see fails
    before any sampling, named: start after end, gates for another model, a DyDiT model, a 16384 px latent,
    core EasyCache on the swept MODEL.
    Compare on two 4096 x 4096 images stops within seconds of /interrupt. Then a valid prompt draws its images."""
    from lazydit.lazy_core.models.dit import DiT, DiTConfig
    from safetensors.torch import save_file

    url, base = server.url, server.base
    demo = json.load(open(WORKFLOW))
    demo["7"]["inputs"]["steps"] = 3
    sweep = json.load(open(SWEEP))
    sweep["7"]["inputs"]["steps"] = 3
    train = {"1": demo["1"], "2": {"class_type": "LazyDiT_TrainGates", "inputs": {
        "model": ["1", 0], "labels": "all", "iterations": 10, "batch": 4, "laziness_pressure": 1e-4,
        "step_counts": "10", "seed": 0, "filename_prefix": "g"}}}
    dydit = {"1": {"class_type": "LazyDiT_DiTLoader", "inputs": {"ckpt_name": DYDIT, "latent": "auto"}},
             "2": {"class_type": "LazyDiT_DyDiT", "inputs": {"model": ["1", 0], "mode": "dynamic", "token_skip": True,
                                                              "threshold": 0.5}},
             "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}}
    fora = {"1": demo["1"], "3": {"class_type": "LazyDiT_FORA", "inputs": {"model": ["1", 0], "interval": 2}},
            "4": {"class_type": "LazyDiT_Report", "inputs": {"model": ["3", 0], "latent": ["6", 0]}},
            "6": demo["6"], "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}}}
    delta = json.loads(json.dumps(fora))
    delta["3"] = {"class_type": "LazyDiT_DeltaDiT", "inputs": {"model": ["1", 0], "cached_share": 0.5,
                                                               "boundary_percent": 0.5, "interval": 2}}
    nan = float("nan")
    refused = [(sweep, "7", "steps", 0), (sweep, "7", "steps", -3), (sweep, "7", "steps", 1000000),
               (sweep, "7", "cfg", nan), (sweep, "7", "cfg", -5.0), (sweep, "7", "cfg", 1e6),
               (sweep, "7", "sampler_name", "bogus"), (sweep, "7", "scheduler", "bogus"), (sweep, "7", "seed", 2 ** 70),
               (sweep, "7", "start_percent", 5.0), (sweep, "7", "end_percent", -3.0),
               (sweep, "7", "start_percent", nan), (sweep, "7", "end_percent", nan),
               (sweep, "7", "laziness_values", "9," * 5000),
               (demo, "3", "laziness", nan), (delta, "3", "cached_share", nan), (fora, "3", "reuse", "guess"),
               (train, "2", "laziness_pressure", nan), (dydit, "2", "threshold", nan),
               (demo, "1", "latent", "vae"), (demo, "1", "cfg_mode", "half")]
    for wf, node, name, value in refused:
        prompt = json.loads(json.dumps(wf))
        prompt[node]["inputs"][name] = value
        status, body, errors = queue(url, prompt)
        assert status == 400 and len(errors) == 1, (name, value, errors)
        assert errors[0][:2] == (node, name) and len(errors[0][2]) < 400, errors

    small = DiT(DiTConfig(input_size=16, depth=2, hidden_size=128, num_heads=2, num_classes=10))
    save_file({k: v.contiguous() for k, v in small.state_dict().items()},
              os.path.join(base, "models", "checkpoints", "other_dit.safetensors"))
    time.sleep(1.1)                            # ComfyUI caches folder listings by mtime
    easycache = {"class_type": "EasyCache", "inputs": {"model": ["1", 0], "reuse_threshold": 0.2, "start_percent": 0.0,
                                                       "end_percent": 1.0, "verbose": False}}
    at_run = [([("7", "start_percent", 0.9), ("7", "end_percent", 0.1)], "start_percent 0.9 is after end_percent 0.1"),
              ([("1", "ckpt_name", "other_dit.safetensors")], "gates fit dit with depth 6 / width 256, but the model "
                                                               "is dit with depth 2 / width 128"),
              ([("1", "ckpt_name", DYDIT)], "DyDiT"),
              ([("5", "width", 16384), ("5", "height", 16384), ("5", "batch_size", 1)],
               "latent_image is 16384x16384 px (latent 2048x2048), but this DiT draws only 128x128"),
              ([("10", None, easycache), ("7", "model", ["10", 0])],
               "this MODEL carries core EasyCache as well as a LazyDiT patch")]
    for changes, message in at_run:
        prompt = json.loads(json.dumps(sweep))
        for node, name, value in changes:
            if name is None:
                prompt[node] = value
            else:
                prompt[node]["inputs"][name] = value
        status, body, errors = queue(url, prompt)
        assert status == 200 and not errors, errors
        done, texts = execution_error(url, body)
        assert texts and all(message in t and len(t) < 1024 for t in texts), texts
        assert "8" not in done["outputs"], "no grid may have been drawn"

    compare = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4096, "height": 4096, "batch_size": 2,
                                                            "color": 0}},
               "2": {"class_type": "EmptyImage", "inputs": {"width": 4096, "height": 4096, "batch_size": 1,
                                                            "color": 0x102030}},
               "3": {"class_type": "LazyDiT_Compare", "inputs": {"image_a": ["1", 0], "image_b": ["2", 0]}},
               "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 3]}}}
    status, body, errors = queue(url, compare)
    assert status == 200, errors
    deadline = time.time() + 120
    while not get(f"{url}/queue")["queue_running"] and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)                            # the images exist and Compare is working on them (about 20 s each)
    asked = time.time()
    server.post("/interrupt", {})
    done = wait_for(url, body["prompt_id"], timeout=60)
    stopped = time.time() - asked
    assert done["status"]["status_str"] == "error" and "4" not in done["outputs"], done["status"]
    assert any(m[0] == "execution_interrupted" for m in done["status"]["messages"]), done["status"]["messages"]
    assert stopped < 10, f"Compare stopped {stopped:.1f} s after /interrupt"
    print(f"Compare 4096 x 4096 over HTTP stopped {stopped:.1f} s after /interrupt")

    assert_draws_demo_images(url, base, demo)
