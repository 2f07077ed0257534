"""Metric tests on cases whose answers are known in closed form."""

import math
import os

import pytest
import torch
from lazydit.lazy_core.demo.metrics import frechet_distance, gaussian_stats, psnr, ssim
from lazydit.lazy_core.models import pixel_latent


def test_psnr_known_values():
    """A uniform error of 0.1 on [0, 1] images is 20 dB; identical images are infinite."""
    a = torch.zeros(2, 1, 8, 8)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert math.isinf(psnr(a, a))


def test_ssim_identity_and_order():
    """SSIM is 1 for identical images and falls as noise grows."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 32, 32, generator=g)
    small = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    large = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert ssim(a, a) == pytest.approx(1.0)
    assert 1.0 > ssim(a, small) > ssim(a, large) > 0


def test_frechet_distance_closed_forms():
    """Equal Gaussians give 0; a mean shift v adds |v|^2; diagonal covariances give sum (sqrt a - sqrt b)^2."""
    d = 4
    mu, eye = torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
    assert frechet_distance((mu, eye), (mu, eye)) == pytest.approx(0.0, abs=1e-9)
    v = torch.tensor([1.0, 2.0, 0.0, -1.0], dtype=torch.float64)
    assert frechet_distance((mu, eye), (v, eye)) == pytest.approx(6.0)
    a, b = torch.tensor([1.0, 4.0, 9.0, 0.25]), torch.tensor([4.0, 1.0, 9.0, 1.0])
    expected = float(((a.sqrt() - b.sqrt()) ** 2).sum())
    got = frechet_distance((mu, torch.diag(a).double()), (mu, torch.diag(b).double()))
    assert got == pytest.approx(expected)


def test_gaussian_stats_match_torch():
    """Feature statistics equal torch's mean and unbiased covariance."""
    f = torch.randn(100, 5, generator=torch.Generator().manual_seed(1))
    mu, cov = gaussian_stats(f)
    torch.testing.assert_close(mu, f.double().mean(0))
    torch.testing.assert_close(cov, torch.cov(f.double().T))


def test_pixel_latent_round_trip():
    """decode then encode returns the latent (to float rounding); encode of an image averages 4x4 blocks."""
    z = torch.rand(3, 4, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    image = pixel_latent.decode(z)
    assert image.shape == (3, 128, 128, 3)
    torch.testing.assert_close(pixel_latent.encode(image), z, atol=2e-7, rtol=0)
    with pytest.raises(ValueError, match="multiples of 8"):
        pixel_latent.encode(torch.zeros(1, 100, 100, 3))


def _ssim_full(a, b):
    """SSIM as written in Wang et al. 2004, in float64 on the whole image at once (the reference)."""
    import torch.nn.functional as F

    a, b = a.double(), b.double()
    c = a.shape[1]
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-x ** 2 / (2 * 1.5 ** 2))
    w = ((g[:, None] * g[None, :]) / g.sum() ** 2)[None, None].expand(c, 1, -1, -1)
    mu_a, mu_b = F.conv2d(a, w, groups=c), F.conv2d(b, w, groups=c)
    var_a, var_b = F.conv2d(a * a, w, groups=c) - mu_a ** 2, F.conv2d(b * b, w, groups=c) - mu_b ** 2
    cov = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return float((((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
                 .mean())


def test_strips_give_the_whole_image_scores():
    """pair_scores in float32 strips of any height (7 rows, 64, all at once) equals SSIM and MSE computed on
    the whole image in float64; NaN in either image is named, not averaged in."""
    from lazydit.lazy_core.demo.metrics import pair_scores

    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 3, 50, 70, generator=g)
    b = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    mse = float(((a.double() - b.double()) ** 2).mean())
    for rows in (7, 64, 1000):
        s = pair_scores(a[0], b[0], rows=rows)
        assert s.ssim == pytest.approx(_ssim_full(a, b), abs=1e-6), rows
        assert s.mse == pytest.approx(mse, rel=1e-6) and not (s.nan_a or s.nan_b)
    bad = b.clone()
    bad[0, 1, 20, 30] = float("nan")
    s = pair_scores(a[0], bad[0])
    assert s.nan_b and not s.nan_a and math.isnan(s.psnr)
    assert math.isnan(pair_scores(a[0, :, :8], b[0, :, :8]).ssim), "smaller than the 11-px window"


def test_psnr_summary_is_the_median_with_identical_and_nan_named():
    """One identical image (inf) or one NaN image does not swamp the figure: the median with min and max,
    and counts of identical and NaN images."""
    from lazydit.lazy_core.demo.metrics import summarize_psnr

    median, text, label = summarize_psnr([30.0, math.inf, 20.0, math.nan])
    assert median == 30.0 and label == "PSNR 30.0 dB (20.0-inf), 1 NaN"
    assert text == "PSNR median 30.00 dB (min 20.00, max inf, 1 of 4 identical, 1 of 4 NaN)"
    assert summarize_psnr([math.inf])[1:] == ("identical (PSNR inf)", "identical")
    assert summarize_psnr([math.nan])[1] == "PSNR nan: the image holds NaN"
    assert summarize_psnr([25.0])[1] == "PSNR 25.00 dB"


def test_scores_of_4096_px_images_stay_in_a_bounded_memory():
    """A 4096 x 4096 RGB pair is scored in strips: the process grows by less than 512 MB beyond the two
    images (the whole-image float64 maps would take 4 GB), measured as the peak RSS in a fresh process
    (113 MB). glibc's mmap threshold is fixed at 1 MB there: left to itself it rises after the first freed
    strip and keeps freed strips on the heap, so the peak grew with the allocator's history (172 MB alone,
    600+ MB late in a full test run), not with what pair_scores holds."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    probe = f"""
import resource, sys, time, torch
sys.path.insert(0, {os.path.join(root, 'scripts')!r}); import checkout
from lazydit.lazy_core.demo.metrics import pair_scores
a = torch.rand(3, 4096, 4096); b = a.clone().add_(0.01).clamp_(0, 1)
rss = int(open('/proc/self/statm').read().split()[1]) * 4096 / 2 ** 20
started = time.perf_counter(); s = pair_scores(a, b, clamp=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(peak - rss, time.perf_counter() - started, s.ssim)
"""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2 ** 20))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    growth, seconds, score = map(float, out.stdout.split())
    assert growth < 512, f"pair_scores grew the process by {growth:.0f} MB"
    assert 0.99 < score < 1.0
    print(f"4096 x 4096 RGB: {growth:.0f} MB beyond the images, {seconds:.1f} s")
