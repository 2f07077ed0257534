"""Gaussian diffusion as DiT and PixArt train and sample it: linear betas 1e-4..0.02 over 1000 steps,
epsilon prediction with a learned-range variance (the "hybrid" loss of Nichol & Dhariwal), DDIM sampling."""

import math

import numpy as np
import torch

NUM_TIMESTEPS = 1000


def linear_betas(num_timesteps=NUM_TIMESTEPS):
    """DiT's "linear" schedule (diffusion/gaussian_diffusion.py get_named_beta_schedule)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_steps, num_timesteps=NUM_TIMESTEPS):
    """DiT's respacing for N steps (diffusion/respace.py, one section), ascending.

    The stride (T - 1) / (N - 1) is accumulated in floating point and each partial sum rounded, as DiT
    does; round(i * stride) differs from it for 278 of the step counts 2..1000 (21 and 35 among them).
    A single step is t = 0 there (stride 1), which this keeps too."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps}, got {num_steps}")
    stride = 1.0 if num_steps == 1 else (num_timesteps - 1) / (num_steps - 1)
    taken, position = [], 0.0
    for _ in range(num_steps):
        taken.append(round(position))
        position += stride
    return sorted(set(taken))


def parse_step_counts(text, num_timesteps=NUM_TIMESTEPS):
    """'10,20,30,50' -> [10, 20, 30, 50] (sorted, unique); an entry that is not a step count is named."""
    counts = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or not 2 <= int(part) <= num_timesteps:
            raise ValueError(f"step count {part!r} in {text!r} is not a whole number in 2..{num_timesteps}; "
                             f"write the step counts you sample with, e.g. '10,20,30,50'")
        counts.add(int(part))
    return sorted(counts)


def _gather(arr, t, ndim):
    """arr[t] as a float32 tensor broadcastable to an ndim-dimensional batch."""
    out = torch.as_tensor(arr, device=t.device)[t].float()
    return out.view(-1, *([1] * (ndim - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of data in [-1, 1] discretised to 256 bins (ADM's decoder term)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class GaussianDiffusion:
    """The 1000-step linear-beta diffusion, its training loss and a DDIM sampler."""

    def __init__(self, num_timesteps=NUM_TIMESTEPS):
        self.num_timesteps = num_timesteps
        betas = linear_betas(num_timesteps)
        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.sqrt_alphas_cumprod = np.sqrt(alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod - 1)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # The posterior variance is 0 at t = 0; clip the log like ADM does.
        self.posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)

    def q_sample(self, x_start, t, noise):
        n = x_start.ndim
        a, b = _gather(self.sqrt_alphas_cumprod, t, n), _gather(self.sqrt_one_minus_alphas_cumprod, t, n)
        return a * x_start + b * noise

    def predict_xstart(self, x_t, t, eps):
        n = x_t.ndim
        a, b = _gather(self.sqrt_recip_alphas_cumprod, t, n), _gather(self.sqrt_recipm1_alphas_cumprod, t, n)
        return a * x_t - b * eps

    def q_posterior(self, x_start, x_t, t):
        n = x_t.ndim
        mean = _gather(self.posterior_mean_coef1, t, n) * x_start + _gather(self.posterior_mean_coef2, t, n) * x_t
        return mean, _gather(self.posterior_log_variance_clipped, t, n)

    def training_losses(self, model, x_start, t, y, noise=None):
        """DiT's loss: eps MSE plus the variational bound for the learned variance (mean frozen in the VB term)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise)
        out = model(x_t, t, y)
        eps, var_values = out.float().chunk(2, dim=1)
        mse = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
        n = x_t.ndim
        min_log = _gather(self.posterior_log_variance_clipped, t, n)
        max_log = torch.log(_gather(self.betas, t, n))
        frac = (var_values + 1) / 2
        model_log_variance = frac * max_log + (1 - frac) * min_log
        model_mean, _ = self.q_posterior(self.predict_xstart(x_t, t, eps.detach()), x_t, t)
        true_mean, true_log_variance = self.q_posterior(x_start, x_t, t)
        kl = normal_kl(true_mean, true_log_variance, model_mean, model_log_variance).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, model_mean, 0.5 * model_log_variance)
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    @torch.no_grad()
    def ddim_sample(self, model, noise, y, steps, cfg_scale=1.0, null_label=None, on_step=None, on_state=None,
                    guided_channels=None):
        """Deterministic DDIM (eta = 0) over DiT's respaced timesteps, with classifier-free guidance on eps.

        model(x, t, y) -> (N, C or 2C, H, W). With cfg_scale != 1 the batch is run as [cond; uncond] in one
        call (as DiT's forward_with_cfg does), so every cond row has its own uncond row. guided_channels=3
        guides only the first three eps channels, as forward_with_cfg does; None guides all of them.
        """
        if cfg_scale != 1.0 and null_label is None:
            raise ValueError("cfg_scale != 1 needs null_label (the class index used for the unconditional row)")
        eps_fn = label_guidance(model, y, cfg_scale, null_label, guided_channels)
        return self.ddim_loop(eps_fn, noise, steps, on_step, on_state)

    def ddim_sigmas(self, steps):
        """The sigmas sqrt((1 - alpha_bar) / alpha_bar) of a DDIM run's steps, then 0 (where its last step
        lands): DDIM is Euler in sigma on x / sqrt(alpha_bar), so d = eps moves that x by d * (sigma_next - sigma)."""
        acp = self.alphas_cumprod
        steps = space_timesteps(steps, self.num_timesteps)[::-1]
        return [math.sqrt((1.0 - float(acp[t])) / float(acp[t])) for t in steps] + [0.0]

    @torch.no_grad()
    def ddim_loop(self, eps_fn, noise, steps, on_step=None, on_state=None):
        """Deterministic DDIM (eta = 0) over DiT's respaced timesteps; eps_fn(x, t) gives the (guided) eps."""
        timesteps = space_timesteps(steps, self.num_timesteps)[::-1]
        x = noise
        for i, t_int in enumerate(timesteps):
            t = torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long)
            if on_state is not None:
                on_state(i, t_int, x)
            eps = eps_fn(x, t)
            x0 = self.predict_xstart(x, t, eps)
            acp_prev = self.alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
            x = math.sqrt(acp_prev) * x0 + math.sqrt(1.0 - acp_prev) * eps
            if on_step is not None:
                on_step(i, t_int)
        return x


def label_guidance(model, y, cfg_scale, null_label, guided_channels=None):
    """eps_fn for class labels: cond and null rows in one call ([cond; uncond]), guided on eps. With
    guided_channels=k only eps channels :k are guided and the rest keep the cond prediction: DiT's
    forward_with_cfg guides 3 of the 4 (models.py, "for exact reproducibility")."""
    def eps_fn(x, t):
        if cfg_scale == 1.0:
            return model(x, t, y)[:, :x.shape[1]].float()
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
        eps_c, eps_u = out[:, :x.shape[1]].float().chunk(2)
        guided = eps_u + cfg_scale * (eps_c - eps_u)
        if guided_channels is None:
            return guided
        return torch.cat([guided[:, :guided_channels], eps_c[:, guided_channels:]], dim=1)
    return eps_fn
