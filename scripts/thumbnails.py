"""Template-browser thumbnails: a same-name .jpg beside each UI workflow in example_workflows/, made from real
output. Workflows on the shipped demo model run headless through ComfyUI and their saved images are tiled;
the real-model ones (DiT-XL/2, PixArt-Σ: their weights are the user's) use the browser test's screenshot of the
workflow loaded in ComfyUI's front end (out/browser/<name>.png; run the browser tests first).

    .venv/bin/python scripts/thumbnails.py
"""

import json
import os

from comfy_headless import ROOT, Comfy
from PIL import Image

FOLDER = os.path.join(ROOT, "example_workflows")
# Workflow -> the SaveImage nodes whose images make its thumbnail, one row each.
RUNS = {
    "lazydit_demo_fashion": ["10"],
    "lazydit_demo_fashion_3x": ["10"],
    "lazydit_compare_fashion": ["16", "14", "13"],
    "lazydit_dydit_fashion": ["17", "9"],
    "lazydit_sweep_fashion": ["8"],
}
SCREENSHOTS = ["lazydit_dit_xl2_256", "lazydit_pixart_sigma", "lazydit_flux_dev", "lazydit_sd35_medium",
               "lazydit_wan21_t2v"]
WIDTH = 640
PER_ROW = 5                # images per row of a thumbnail


def tile(rows):
    """Rows of images pasted into one picture, each row's images side by side."""
    w = max(sum(i.width for i in row) for row in rows)
    h = sum(max(i.height for i in row) for row in rows)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    y = 0
    for row in rows:
        x = 0
        for img in row:
            canvas.paste(img, (x, y))
            x += img.width
        y += max(i.height for i in row)
    return canvas


def graph_only(shot):
    """The screenshot cropped to the drawn graph: the canvas below the tab bar and toolbar, right of the side
    bar, above the bottom controls, cut to what differs from the canvas background (with a margin)."""
    w, h = shot.size
    area = (80, 110, w - 10, h - 110)
    canvas = shot.crop(area).convert("L")
    background = canvas.getpixel((5, 5))
    box = canvas.point(lambda v: 255 if abs(v - background) > 12 else 0).getbbox()
    if box is None:
        return shot
    m = 20
    return shot.crop((max(area[0] + box[0] - m, 0), max(area[1] + box[1] - m, 0),
                      min(area[0] + box[2] + m, w), min(area[1] + box[3] + m, h)))


def save(picture, name):
    scale = WIDTH / picture.width
    picture = picture.convert("RGB").resize((WIDTH, max(1, round(picture.height * scale))), Image.LANCZOS)
    path = os.path.join(FOLDER, f"{name}.jpg")
    picture.save(path, "JPEG", quality=85, optimize=True)
    print(f"{path}: {picture.width}x{picture.height}")


def main():
    comfy = Comfy(os.path.join(ROOT, "out", "thumbnails_base"))
    for name, nodes in RUNS.items():
        outputs = comfy.run(json.load(open(os.path.join(FOLDER, "api", f"{name}.json"))))
        rows = []
        for node in nodes:
            images = [Image.open(os.path.join(comfy.output, i["subfolder"], i["filename"])).convert("RGB")
                      for i in outputs[node]["images"]]
            rows += [images[i:i + PER_ROW] for i in range(0, len(images), PER_ROW)]
        save(tile(rows), name)
    for name in SCREENSHOTS:
        shot = os.path.join(ROOT, "out", "browser", f"{name}.png")
        if not os.path.exists(shot):
            raise SystemExit(f"{shot} is missing: run the browser tests first (scripts/test.sh -m browser)")
        save(graph_only(Image.open(shot).convert("RGB")), name)


if __name__ == "__main__":
    main()
