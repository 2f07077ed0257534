"""Quality metrics: paired fidelity (PSNR, SSIM) against the exact output, and the Fréchet distance of
classifier features (FID computed in the demo classifier's feature space, not Inception's: the numbers
compare methods within this project, not with published ImageNet FIDs)."""

import math
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WINDOW = 11                  # SSIM's Gaussian window (Wang et al. 2004), sigma 1.5
STRIP_ROWS = 64              # rows of the SSIM map per strip in pair_scores


def psnr(a, b, data_range=1.0):
    """Mean over images of 10 log10(range^2 / MSE); a, b: (N, C, H, W). Identical images give inf."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(data_range ** 2 / mse)).mean())


def psnr_of(mse, data_range=1.0):
    """PSNR in dB of a mean squared error: inf for 0 (identical), nan for nan."""
    if math.isnan(mse):
        return math.nan
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def _gaussian(size=WINDOW, sigma=1.5):
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).float()                                     # (size,): the window is its outer product


def ssim(a, b, data_range=1.0):
    """Mean SSIM over images (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid
    region); a, b: (N, C, H, W)."""
    return sum(pair_scores(x, y, data_range).ssim for x, y in zip(a, b)) / len(a)


@dataclass
class PairScores:
    """How far one image is from its reference."""

    mse: float               # mean squared error over pixels and channels (nan if either holds NaN)
    ssim: float              # mean SSIM (nan if the image is smaller than the window or holds NaN)
    nan_a: bool              # the reference holds NaN
    nan_b: bool              # the image holds NaN

    @property
    def psnr(self):
        return psnr_of(self.mse)


def pair_scores(a, b, data_range=1.0, rows=STRIP_ROWS, clamp=False, on_strip=None):
    """MSE and SSIM of one image a against b, both (C, H, W), in float32 strips of `rows` rows of the SSIM
    map (each strip reads `rows` + 10 image rows), so the work memory is set by the image width, not its
    height: measured 113 MB of peak RSS for RGB 4096 px wide at 64 rows, for any height, with freed strips
    given back to the system (tests/test_metrics.py). The Gaussian window is applied as two 1-D passes (it
    is separable).
    `clamp` clips both to 0..data_range first; `on_strip()` runs before each strip (an interrupt check)."""
    C, H, W = a.shape
    g = _gaussian().to(a.device)
    vertical = g.view(1, 1, WINDOW, 1).expand(5 * C, 1, WINDOW, 1)
    horizontal = g.view(1, 1, 1, WINDOW).expand(5 * C, 1, 1, WINDOW)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    map_rows = H - WINDOW + 1 if min(H, W) >= WINDOW else 0
    squared, ssim_sum, nan_a, nan_b = 0.0, 0.0, False, False

    def strip(x, r0, r1):
        x = x[:, r0:r1].float()                                     # (C, r1 - r0, W)
        return x.clamp(0, data_range) if clamp else x

    for r0 in range(0, H, rows):
        if on_strip is not None:
            on_strip()
        x, y = strip(a, r0, r0 + rows), strip(b, r0, r0 + rows)
        nan_a, nan_b = nan_a or bool(x.isnan().any()), nan_b or bool(y.isnan().any())
        squared += float((x.double() - y.double()).square().sum())
        if r0 < map_rows:
            end = min(r0 + rows, map_rows) + WINDOW - 1             # the strip's map rows and their halo
            x, y = strip(a, r0, end), strip(b, r0, end)
            moments = torch.cat([x, y, x * x, y * y, x * y])[None]  # (1, 5C, rows + 10, W)
            m = F.conv2d(F.conv2d(moments, vertical, groups=5 * C), horizontal, groups=5 * C)[0]   # (5C, rows, W - 10)
            mu_a, mu_b, aa, bb, ab = m.chunk(5)
            var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
            s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
            ssim_sum += float(s.double().sum())
    mse = squared / (C * H * W)
    score = ssim_sum / (C * map_rows * (W - WINDOW + 1)) if map_rows else math.nan
    return PairScores(mse, score, nan_a, nan_b)


def summarize_psnr(values):
    """(median, text, label) of per-image PSNRs: the median with min and max, identical images (inf) and NaN
    images counted as such, never averaged into a mean that one of them would swamp. `label` is a short
    form for a grid caption."""
    known = sorted(v for v in values if not math.isnan(v))
    nans, same = len(values) - len(known), sum(math.isinf(v) for v in known)
    if not known:
        return math.nan, f"PSNR nan: {'the image holds' if len(values) == 1 else 'every image holds'} NaN", "NaN"
    median = statistics.median(known)
    if len(values) == 1:
        return (median, "identical (PSNR inf)", "identical") if same else \
            (median, f"PSNR {median:.2f} dB", f"PSNR {median:.1f} dB")
    parts = [f"min {known[0]:.2f}", f"max {known[-1]:.2f}"]
    parts += [f"{same} of {len(values)} identical"] if same else []
    parts += [f"{nans} of {len(values)} NaN"] if nans else []
    label = f"PSNR {median:.1f} dB ({known[0]:.1f}-{known[-1]:.1f})" + (f", {nans} NaN" if nans else "")
    return median, f"PSNR median {median:.2f} dB ({', '.join(parts)})", label


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
