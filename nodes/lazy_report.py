"""Renders a run report (lazy_core.engine.report.summarize) as a heat-map IMAGE an artist can read."""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

CELL = 12          # px per step x module cell
MARGIN = 64        # left margin for block labels
TITLE = 44         # px above each panel


def _colour(ratio):
    """0 (computed) -> dark blue-grey, 1 (lazy in every row) -> warm yellow."""
    lo, hi = np.array([30, 34, 56], np.float32), np.array([250, 204, 21], np.float32)
    return (lo + (hi - lo) * ratio[..., None]).astype(np.uint8)


def render_heatmap(report):
    """One panel per stream: rows = blocks x (attn, mlp), columns = steps. Returns (1, H, W, 3) float."""
    font = ImageFont.load_default()
    panels = []
    for s in report["streams"]:
        ratio = s["ratio_map"].numpy()                               # (depth, 2, steps)
        depth, _, steps = ratio.shape
        grid = ratio.reshape(depth * 2, steps)                       # block-major: b0 attn, b0 mlp, b1 attn ...
        cell = max(4, min(CELL, 720 // max(steps, 1)))
        h, w = depth * 2 * cell, steps * cell
        img = Image.new("RGB", (MARGIN + max(w, 360) + 8, TITLE + h + 24), (245, 245, 245))
        heat = np.kron(_colour(grid), np.ones((cell, cell, 1), np.uint8))
        img.paste(Image.fromarray(heat), (MARGIN, TITLE))
        d = ImageDraw.Draw(img)
        rows = f"{s['rows']} row{'s' * (s['rows'] != 1)}"
        d.text((8, 6), f"{s['label']}: {s['ratio']:.1%} lazy ({rows}, {steps} steps)", fill=(0, 0, 0),
               font=font)
        d.text((8, 22), "rows: block (attn, mlp); columns: steps; bright = lazy", fill=(90, 90, 90), font=font)
        for b in range(depth):
            if depth <= 14 or b % 4 == 0:
                d.text((8, TITLE + b * 2 * cell + max(0, cell - 6)), f"block {b}", fill=(0, 0, 0), font=font)
        for step in range(0, steps, max(1, steps // 10)):
            d.text((MARGIN + step * cell, TITLE + h + 6), str(step), fill=(0, 0, 0), font=font)
        panels.append(np.asarray(img))
    if not panels:
        panels = [np.full((64, 360, 3), 245, np.uint8)]
    width = max(p.shape[1] for p in panels)
    panels = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=245) for p in panels]
    return torch.from_numpy(np.concatenate(panels, axis=0)).float().div(255).unsqueeze(0)


def render_widths(report):
    """A DyDiT run (lazy_core.models.dydit.summarize) as three panels: active heads, MLP channels and MLP
    tokens per block (rows) and step (columns); bright = more of the block computes. (1, H, W, 3) float."""
    font = ImageFont.load_default()
    shares = report["shares"].numpy()                                # (3, depth, steps)
    _, depth, steps = shares.shape
    cell = max(4, min(CELL * 2, 720 // max(steps, 1)))
    panels = []
    for title, grid in zip(("attention heads", "MLP channels", "MLP tokens"), shares):
        h, w = depth * cell, steps * cell
        img = Image.new("RGB", (MARGIN + max(w, 360) + 8, TITLE + h + 24), (245, 245, 245))
        img.paste(Image.fromarray(np.kron(_colour(grid), np.ones((cell, cell, 1), np.uint8))), (MARGIN, TITLE))
        d = ImageDraw.Draw(img)
        d.text((8, 6), f"{title}: {grid.mean():.0%} active on average ({steps} steps)", fill=(0, 0, 0), font=font)
        d.text((8, 22), "rows: blocks; columns: steps; bright = computed, dark = skipped", fill=(90, 90, 90),
               font=font)
        for b in range(depth):
            if depth <= 14 or b % 4 == 0:
                d.text((8, TITLE + b * cell + max(0, cell // 2 - 6)), f"block {b}", fill=(0, 0, 0), font=font)
        for step in range(0, steps, max(1, steps // 10)):
            d.text((MARGIN + step * cell, TITLE + h + 6), str(step), fill=(0, 0, 0), font=font)
        panels.append(np.asarray(img))
    width = max(p.shape[1] for p in panels)
    panels = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=245) for p in panels]
    return torch.from_numpy(np.concatenate(panels, axis=0)).float().div(255).unsqueeze(0)


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):                     # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_grid(columns, labels, cell=256):
    """Laziness Sweep's grid: a column per run (its labels on top), a row per image. columns: [(B, H, W, C)
    float in 0..1]; labels: per column, a few lines of text. Small images are enlarged (nearest, so pixels
    stay sharp) and large ones reduced, to `cell` px wide. Returns (1, H', W', 3) float."""
    font = _font(14)
    n, h, w = columns[0].shape[:3]
    size = (cell, max(1, round(h * cell / w)))
    resample = Image.NEAREST if w < cell else Image.LANCZOS
    line, gap = 18, 8
    top = line * max(len(lines) for lines in labels) + 2 * gap
    grid = Image.new("RGB", (len(columns) * (size[0] + gap) + gap, top + n * (size[1] + gap)), (245, 245, 245))
    d = ImageDraw.Draw(grid)
    for c, (images, lines) in enumerate(zip(columns, labels)):
        x = gap + c * (size[0] + gap)
        for i, text in enumerate(lines):
            d.text((x, gap + i * line), text, fill=(0, 0, 0) if i == 0 else (70, 70, 70), font=font)
        rgb = images[..., :3].expand(*images.shape[:3], 3) if images.shape[-1] == 1 else images[..., :3]
        for r, image in enumerate((rgb.clamp(0, 1) * 255).round().byte().numpy()):
            grid.paste(Image.fromarray(image).resize(size, resample), (x, top + r * (size[1] + gap)))
    return torch.from_numpy(np.asarray(grid).copy()).float().div(255).unsqueeze(0)


def render_difference(a, b, full_scale=0.25):
    """Per-pixel |a - b| (mean over channels) as a heat-map the size of the images: dark = equal, bright =
    a difference of `full_scale` of the range or more, or NaN. a, b: (N, H, W, C) float. Returns (N, H, W, 3)."""
    diff = (a[..., :3] - b[..., :3]).abs().mean(-1).div(full_scale).nan_to_num(1.0).clamp(0, 1).numpy()  # (N, H, W)
    return torch.from_numpy(_colour(diff)).float().div(255)
