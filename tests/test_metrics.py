"""Metric tests on cases whose answers are known in closed form."""

import math

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
