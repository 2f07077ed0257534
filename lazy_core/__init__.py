"""LazyDiT engine: plain PyTorch, no ComfyUI imports."""
