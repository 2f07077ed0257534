"""LazyDiT in plain PyTorch, no ComfyUI imports.

engine/    what runs while a model samples: gates, the cache, policies, module proxies, the report
models/    DiT, its diffusion schedule and the demo's pixel latent
training/  gate training, the sensitivity measurement, calibration of the laziness slider
demo/      the demo model's data, classifier, training and evaluation metrics
"""
