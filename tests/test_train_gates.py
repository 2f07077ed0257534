"""Gate training: the loss falls on a tiny model, and torchrun with 2 processes matches 1 process."""

import json
import os
import subprocess
import sys

import pytest
import torch
from lazydit.lazy_core.engine.gates import GateBank
from lazydit.lazy_core.models.dit import DiT, DiTConfig
from lazydit.lazy_core.training import train_gates as tg
from lazydit.lazy_core.training.calibrate import calibrate
from safetensors.torch import save_file

# The command lines run as users run them: `python -m lazy_core...` from the pack folder.
PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = DiTConfig(input_size=8, depth=3, hidden_size=32, num_heads=2, num_classes=10)


def tiny_model():
    torch.manual_seed(0)
    model = DiT(CONFIG)
    model.initialize_weights(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))     # strong enough that module outputs matter
    return model.eval().requires_grad_(False)


def args_for(*extra):
    return tg.parser().parse_args(["--model", "-", "--out", "-", "--iters", "60", "--batch", "16", "--pool", "16",
                                   "--step-counts", "10,20", "--buckets", "5", "--threads", "1",
                                   "--objective", "local", "--seed", "0", *extra])


def fixed_batch_mse(model, gates):
    """Distillation MSE of `gates` on one fixed batch (t 500 -> 400)."""
    from lazydit.lazy_core.models.diffusion import GaussianDiffusion
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 4, 8, 8, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    t_a, t_b = torch.full((16,), 500), torch.full((16,), 400)
    d = GaussianDiffusion()
    with torch.no_grad():
        _, mse, _ = tg.gate_loss(model, gates, x, t_a, lambda eps: tg.ddim_to(d, x, t_a, t_b, eps), t_b, y, 0.0)
    return float(mse)


def test_loss_falls_and_only_gates_train():
    """Training lowers the distillation loss from its zero-gate start; the model's weights do not move."""
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    gates = tg.train(model, args_for("--rho", "0"), on_iter=lambda i, n, loss: losses.append(loss))
    assert len(losses) == 60
    start = fixed_batch_mse(model, GateBank(gates.info))      # zero gates: the starting point
    end = fixed_batch_mse(model, gates)
    assert end < 0.5 * start, f"fixed-batch MSE {start:.3g} -> {end:.3g}"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_laziness_pressure_makes_gates_lazier():
    """A larger rho gives lower compute scores, so more modules are lazy at the 0.5 threshold."""
    model = tiny_model()
    soft = tg.train(model, args_for("--rho", "0"))
    lazy = tg.train(model, args_for("--rho", "0.05"))
    ratio_soft = dict(calibrate(model, soft, step_counts=(10,), thresholds=(0.5,))[0])[0.5]
    ratio_lazy = dict(calibrate(model, lazy, step_counts=(10,), thresholds=(0.5,))[0])[0.5]
    assert ratio_lazy > ratio_soft, (ratio_soft, ratio_lazy)


def test_real_data_source():
    """The paper's source (real images noised to t) trains too."""
    model = tiny_model()
    real = (torch.rand(64, 4, 8, 8) * 2 - 1, torch.randint(0, 10, (64,)))
    gates = tg.train(model, args_for("--source", "real", "--rho", "0"), real_latents=real)
    assert fixed_batch_mse(model, gates) < 0.5 * fixed_batch_mse(model, GateBank(gates.info))


def test_sensitivity_cli_writes_calibrated_log_cost_gates(model_file, tmp_path):
    """The default objective from the command line: a log-cost gate file with its measured R^2, training
    time and a calibration table that rises to the engine's limit; refused under torchrun."""
    out = tmp_path / "sens.safetensors"
    cmd = [sys.executable, "-m", "lazy_core.training.train_gates", "--model", str(model_file),
           "--out", str(out),
           "--images", "6", "--measure-steps", "8", "--buckets", "5", "--threads", "1", "--calibrate", "8",
           "--no-correct"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=PACK)
    assert done.returncode == 0, done.stderr[-3000:]
    gates = GateBank.load(out)
    assert gates.info.score == "log-cost" and gates.info.recipe["objective"] == "sensitivity"
    assert "r2_holdout_mean" in gates.info.recipe and gates.info.recipe["train_seconds"] > 0
    assert gates.info.recipe["correct"] is False
    ratios = [r for _, r in gates.info.calibration]
    # 8 steps allow at most 4 lazy (every other step after the first); the top price gets most of them. (Chains
    # measured with the correction can cost less than a shorter chain, which the plan then takes for free.)
    assert ratios[0] == 0.0 and ratios == sorted(ratios) and ratios[-1] >= 0.3, gates.info.calibration
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # the torchrun script, in any venv layout
    done = subprocess.run([*torchrun, "--standalone", "--nproc_per_node", "2", *cmd[1:]], capture_output=True,
                          text=True, timeout=300, cwd=PACK)
    assert done.returncode != 0 and "--objective sensitivity runs on one process" in done.stderr


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model().state_dict().items()}, str(path),
              metadata={"config": json.dumps(CONFIG.to_dict())})
    return path


def run_cli(launcher, model_file, out):
    cmd = [*launcher, "-m", "lazy_core.training.train_gates", "--model", str(model_file), "--out", str(out),
           "--iters", "20", "--batch", "8", "--pool", "16", "--step-counts", "10", "--buckets", "5", "--threads", "1",
           "--calibrate", "", "--objective", "local"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=PACK)
    assert done.returncode == 0, done.stderr[-3000:]
    return GateBank.load(out)


def test_torchrun_two_processes_match_one(model_file, tmp_path):
    """torchrun --nproc_per_node 2 (gloo) with the same global batch trains the same gates as 1 process."""
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # the torchrun script, in any venv layout
    one = run_cli([sys.executable], model_file, tmp_path / "one.safetensors")
    two = run_cli([*torchrun, "--standalone", "--nproc_per_node", "2"], model_file, tmp_path / "two.safetensors")
    assert two.info.recipe["world_size"] == 2 and one.info.recipe["world_size"] == 1
    torch.testing.assert_close(two.weight, one.weight, atol=1e-4, rtol=1e-3)
    assert one.weight.abs().sum() > 0


def test_device_choice():
    """--device auto takes this process's GPU under torchrun (LOCAL_RANK) or the CPU; asking for CUDA where
    there is none is a clear error."""
    import torch
    from lazydit.lazy_core.training import launch

    assert launch.device_for("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert launch.device_for("auto").type == "cuda"
    else:
        assert launch.device_for("auto") == torch.device("cpu")
        with pytest.raises(SystemExit, match="CUDA is not available here; use --device cpu"):
            launch.device_for("cuda")
