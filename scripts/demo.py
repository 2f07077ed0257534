"""The demo: the built-in Fashion-MNIST DiT draws all 10 classes through the real ComfyUI, once exactly and
once with its trained lazy gates, and writes a side-by-side grid and the run report.

    bash scripts/demo.sh            (README's demo command: set-up, then this)
"""

import copy
import json
import os
import time

import numpy as np
from comfy_headless import ROOT, Comfy
from lazydit.lazy_core.demo.fashion import CLASSES
from PIL import Image, ImageDraw

WORKFLOW = os.path.join(ROOT, "example_workflows", "api", "lazydit_demo_fashion.json")
OUT = os.path.join(ROOT, "out")


def images(comfy, outputs, node):
    return [Image.open(os.path.join(comfy.output, i["subfolder"], i["filename"])).convert("RGB")
            for i in outputs[node]["images"]]


def grid(rows, labels, columns):
    """Rows of 128 px images, a label column on the left and a class-name header on top."""
    w, h = rows[0][0].size
    top, left = 20, 110
    canvas = Image.new("RGB", (left + w * len(rows[0]), top + h * len(rows)), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for c, name in enumerate(columns):
        d.text((left + c * w + 6, 4), name, fill=(0, 0, 0))
    for r, (row, label) in enumerate(zip(rows, labels)):
        d.text((6, top + r * h + h // 2 - 12), label, fill=(0, 0, 0))
        for c, img in enumerate(row):
            canvas.paste(img, (left + c * w, top + r * h))
    return canvas


def main():
    t0 = time.time()
    os.makedirs(OUT, exist_ok=True)
    comfy = Comfy(os.path.join(OUT, "comfy_base"))
    prompt = json.load(open(WORKFLOW))
    exact = copy.deepcopy(prompt)
    exact["3"]["inputs"]["laziness"] = 0.0
    exact["10"]["inputs"]["filename_prefix"] = "lazydit_demo_exact"
    exact["12"]["inputs"]["filename_prefix"] = "lazydit_demo_exact_report"
    t1 = time.time()
    lazy_out = comfy.run(prompt)
    t2 = time.time()
    exact_out = comfy.run(exact)
    t3 = time.time()
    lazy_imgs, exact_imgs = images(comfy, lazy_out, "10"), images(comfy, exact_out, "10")
    diff = np.mean([np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()
                    for a, b in zip(lazy_imgs, exact_imgs)])
    path = os.path.join(OUT, "demo_grid.png")
    laziness = prompt["3"]["inputs"]["laziness"]
    grid([exact_imgs, lazy_imgs], ["exact", f"lazy ({laziness})"], CLASSES).save(path)
    report = images(comfy, lazy_out, "12")[0]
    report_path = os.path.join(OUT, "demo_report.png")
    report.save(report_path)
    print(f"ComfyUI start-up {t1 - t0:.1f} s; lazy workflow {t2 - t1:.1f} s; exact workflow {t3 - t2:.1f} s")
    print(f"mean absolute pixel difference lazy vs exact: {diff:.2f} / 255")
    print(f"images: {comfy.output}")
    print(f"grid (top: exact, bottom: lazy): {path}")
    print(f"lazy report heat-map: {report_path}")


if __name__ == "__main__":
    main()
