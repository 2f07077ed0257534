"""The artist's tuning tools in the real ComfyUI, on the shipped demo model and gates: Laziness Sweep (its exact
column is KSampler's own run, measured columns, the exact run reused, clear errors) and Compare (PSNR/SSIM
against known values, the difference map, shape errors). example_workflows/lazydit_sweep_fashion.json and
lazydit_compare_fashion.json run in tests/test_workflows.py."""

import math

import pytest
import torch

pytestmark = pytest.mark.usefixtures("comfy")
STEPS = 8


@pytest.fixture(scope="module")
def demo():
    """(model, gates, positive, negative, vae) as the demo workflow loads them; two classes."""
    from lazydit.nodes.labels import ClassLabel, NullLabel
    from lazydit.nodes.lazy_nodes import LoadLazyGates
    from lazydit.nodes.loaders import LoadDemoVAE, LoadDiT

    model = LoadDiT.execute("dit_demo_fashion.safetensors (built in)", "auto").args[0]
    gates = LoadLazyGates.execute("dit_demo_fashion_gates.safetensors (built in)").args[0]
    positive = ClassLabel.execute(model, "Sneaker, Bag").args[0]
    negative = NullLabel.execute(model).args[0]
    return model, gates, positive, negative, LoadDemoVAE.execute().args[0]


def latent():
    return {"samples": torch.zeros(2, 4, 16, 16)}


def sweep(demo, values, gates=True, model=None, seed=7):
    from lazydit.nodes.tuning import LazinessSweep

    m, g, pos, neg, vae = demo
    return LazinessSweep.execute(model or m, pos, neg, latent(), vae, seed, STEPS, 4.0, "euler", "normal", values,
                                 g if gates else None).args


def test_sweep_columns(demo):
    """Columns: exact first (0 added), then each value; the exact column is exactly KSampler + VAE Decode;
    the measured lazy share grows with laziness; the grid holds every column and row."""
    import nodes as comfy_nodes

    model, _, pos, neg, vae = demo
    grid, images, text = sweep(demo, "1, 0.5", seed=11)
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["exact", "laziness 0.50", "laziness 1.00"], text
    assert "reference" in lines[0] and "reused" not in lines[0]
    shares = [float(line.split(": ")[1].split("%")[0]) for line in lines]
    assert shares[0] == 0 < shares[1] < shares[2], shares
    assert all("PSNR" in line for line in lines[1:])
    (samples,) = comfy_nodes.common_ksampler(model, 11, STEPS, 4.0, "euler", "normal", pos, neg, latent())
    assert torch.equal(images[:2], vae.decode(samples["samples"]))
    assert images.shape[0] == 6 and not torch.equal(images[:2], images[4:])
    assert grid.shape[0] == 1 and grid.shape[2] > 3 * 256 and grid.shape[1] > 2 * 256


def test_sweep_reuses_the_exact_run(demo):
    """A second sweep of the same prompt with other values reuses the exact run (and says so); another seed
    does not."""
    _, first, _ = sweep(demo, "0.5", seed=3)
    _, again, text = sweep(demo, "0.25", seed=3)
    assert "reused" in text.splitlines()[0] and torch.equal(first[:2], again[:2])
    _, _, text = sweep(demo, "0.25", seed=4)
    assert "reused" not in text


def test_sweep_of_a_patched_model(demo):
    """Without gates, the MODEL's own LazyDiT patch (here FORA) is drawn next to the exact run."""
    from lazydit.nodes.sibling_nodes import ForaNode

    fora = ForaNode.execute(demo[0], 2).args[0]
    _, images, text = sweep(demo, "0.5", gates=False, model=fora)
    lines = text.splitlines()
    assert len(lines) == 2 and lines[1].startswith("FORA, interval 2") and images.shape[0] == 4
    with pytest.raises(ValueError, match="needs gates .* or a MODEL patched by a LazyDiT node"):
        sweep(demo, "0.5", gates=False)


@pytest.mark.parametrize("values", ["0.5, abc", "2", "", ",".join(["0.1"] * 3 + [str(i / 20) for i in range(13)])])
def test_sweep_refuses_bad_values(values):
    """A value list that is not 1-12 numbers in 0..1 is refused at queue time with an example of a good one."""
    from lazydit.nodes.tuning import LazinessSweep

    message = LazinessSweep.validate_inputs(laziness_values=values)
    assert isinstance(message, str) and "laziness_values" in message and "0, 0.25" in message, message


def compare(a, b):
    from lazydit.nodes.tuning import Compare

    return Compare.execute(a, b).args


def test_compare_known_values():
    """Identical images: PSNR inf, SSIM 1, a dark map. A uniform +0.1 offset: PSNR exactly 20 dB, the map at
    0.1 / 0.25 of its ramp everywhere. A batch of one is compared with each image of the other batch."""
    from lazydit.nodes.lazy_report import render_difference

    a = 0.25 + 0.5 * torch.rand(3, 32, 24, 3, generator=torch.Generator().manual_seed(0))
    diff, p, s, text = compare(a, a)
    assert p == math.inf and s == pytest.approx(1.0) and diff.shape == (3, 32, 24, 3)
    assert (diff == diff[0, 0, 0]).all() and diff[0, 0, 0].max() < 0.25          # one dark colour
    diff, p, s, text = compare(a, a + 0.1)
    assert p == pytest.approx(20.0, abs=1e-4) and s < 1.0 and "PSNR 20.00 dB" in text
    assert torch.allclose(diff, render_difference(torch.zeros(1, 1, 1, 3), torch.full((1, 1, 1, 3), 0.1)),
                          atol=1.5 / 255)
    _, p, _, text = compare(a[:1], a)
    assert len(text.splitlines()) == 4 and p > 20


def test_compare_refuses_other_sizes():
    with pytest.raises(ValueError, match=r"image_a is 2 x 24x32, image_b 2 x 32x32 .* same latent size"):
        compare(torch.zeros(2, 32, 24, 3), torch.zeros(2, 32, 32, 3))
    with pytest.raises(ValueError, match="equal batches, or a batch of one"):
        compare(torch.zeros(2, 32, 32, 3), torch.zeros(3, 32, 32, 3))
