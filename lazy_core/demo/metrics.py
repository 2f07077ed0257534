"""Quality metrics: paired fidelity (PSNR, SSIM) against the exact output, and the Fréchet distance of
classifier features (FID computed in the demo classifier's feature space, not Inception's: the numbers
compare methods within this project, not with published ImageNet FIDs)."""

import torch
import torch.nn.functional as F


def psnr(a, b, data_range=1.0):
    """Mean over images of 10 log10(range^2 / MSE); a, b: (N, C, H, W). Identical images give inf."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(data_range ** 2 / mse)).mean())


def _gaussian_window(size=11, sigma=1.5):
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]                   # (1, 1, size, size)


def ssim(a, b, data_range=1.0):
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid region)."""
    a, b = a.double(), b.double()
    c = a.shape[1]
    w = _gaussian_window().to(a.device).expand(c, 1, -1, -1)
    mu_a, mu_b = F.conv2d(a, w, groups=c), F.conv2d(b, w, groups=c)
    var_a = F.conv2d(a * a, w, groups=c) - mu_a ** 2
    var_b = F.conv2d(b * b, w, groups=c) - mu_b ** 2
    cov = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def gaussian_stats(features):
    """(mean, covariance) of (N, D) features, in float64."""
    f = features.double()
    mu = f.mean(0)
    centered = f - mu
    return mu, centered.T @ centered / (len(f) - 1)


def frechet_distance(stats1, stats2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), via the symmetric form sqrt(S1) S2 sqrt(S1)."""
    (mu1, s1), (mu2, s2) = stats1, stats2
    vals, vecs = torch.linalg.eigh(s1)
    sqrt_s1 = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(sqrt_s1 @ s2 @ sqrt_s1).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross)
