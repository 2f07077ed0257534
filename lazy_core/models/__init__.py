"""The models: DiT (facebookresearch/DiT layout), its Gaussian diffusion, the demo's pixel latent."""
