"""Where a command-line run computes: the device, and under torchrun the process group and this rank."""

import os

import torch
import torch.distributed as dist


def device_for(choice="auto"):
    """"auto": this process's GPU (LOCAL_RANK under torchrun) if CUDA is there, else the CPU."""
    if choice != "auto":
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"--device {choice}: CUDA is not available here; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def start(choice="auto"):
    """(device, rank, world). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on GPUs,
    gloo on CPUs. Each rank drives the GPU of its LOCAL_RANK."""
    device = device_for(choice)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
    return device, rank, world


def stop(world):
    if world > 1:
        dist.destroy_process_group()
