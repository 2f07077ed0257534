"""The demo model's VAE stand-in: a fixed, exactly invertible map between a grey image and a 4-channel
latent at 1/8 of the image side (ComfyUI's latent layout), so core EmptyLatentImage / VAEDecode /
VAEEncode work unchanged.

latent (B, 4, h, w)  <->  grey image at 2h x 2w (2x2 pixel shuffle)  <->  RGB image at 8h x 8w (nearest x4)
Latent values are the grey values mapped from [0, 1] to [-1, 1]. decode then encode returns any latent in
[-1, 1] to float rounding (< 2e-7): every 4x4 block of a decoded image holds one value, which encode reads
back; the only loss is the affine [-1, 1] <-> [0, 1] map in float32.
"""

import torch
import torch.nn.functional as F

UPSCALE = 4          # grey pixel -> 4x4 image pixels
SHUFFLE = 2          # 2x2 grey pixels -> 4 latent channels
DOWNSCALE = UPSCALE * SHUFFLE   # = 8, ComfyUI's latent stride


def decode(latent):
    """(B, 4, h, w) latent -> (B, 8h, 8w, 3) image in [0, 1] (ComfyUI's IMAGE layout)."""
    grey = F.pixel_shuffle(latent.float(), SHUFFLE)                     # (B, 1, 2h, 2w)
    grey = ((grey + 1) / 2).clamp(0, 1)
    image = grey.repeat_interleave(UPSCALE, dim=2).repeat_interleave(UPSCALE, dim=3)  # (B, 1, 8h, 8w)
    return image.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous()  # (B, 8h, 8w, 3)


def encode(image):
    """(B, H, W, C) image in [0, 1] -> (B, 4, H/8, W/8) latent. Sides must be multiples of 8.

    Each grey pixel is the mean of its 4x4 block's channel-mean; for a decoded image every block holds
    one value, so the block's top-left pixel is read instead (no averaging error)."""
    B, H, W, _ = image.shape
    if H % DOWNSCALE or W % DOWNSCALE:
        raise ValueError(f"image sides must be multiples of {DOWNSCALE}, got {H}x{W}")
    grey = image.float().mean(dim=-1, keepdim=True).permute(0, 3, 1, 2)   # (B, 1, H, W)
    blocks = grey.reshape(B, 1, H // UPSCALE, UPSCALE, W // UPSCALE, UPSCALE)
    corner = blocks[:, :, :, 0, :, 0]                                      # (B, 1, H/4, W/4)
    flat = (blocks == corner[:, :, :, None, :, None]).all(dim=(3, 5))      # constant blocks
    grey = torch.where(flat, corner, blocks.mean(dim=(3, 5)))
    return F.pixel_unshuffle(grey * 2 - 1, SHUFFLE)                        # (B, 4, H/8, W/8)
