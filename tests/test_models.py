"""lazy_core models without ComfyUI: DiT's respacing and guidance, the label grammar, checkpoint checks."""

import itertools

import pytest
import torch
from lazydit.lazy_core.demo.fashion import CLASSES
from lazydit.lazy_core.models.diffusion import GaussianDiffusion, space_timesteps
from lazydit.lazy_core.models.labels import MAX_LABELS, LabelError, parse_labels


def respaced_reference(steps, num_timesteps=1000):
    """DiT's diffusion/respace.py for one section, written out: the float stride is added up step by step
    and every partial sum is rounded (Python's round, as there)."""
    stride = 1 if steps <= 1 else (num_timesteps - 1) / (steps - 1)
    sums = itertools.accumulate(itertools.repeat(stride, steps - 1), initial=0.0)
    return sorted({round(s) for s in sums})


def test_respacing_matches_dit_for_every_step_count():
    """space_timesteps gives DiT's respaced timesteps for every step count 1..1000."""
    wrong = [n for n in range(1, 1001) if space_timesteps(n) != respaced_reference(n)]
    assert not wrong, f"differs from respace.py for {len(wrong)} step counts, first {wrong[:5]}"


def test_respacing_differs_from_multiplied_stride():
    """Accumulating the stride is not round(i * stride): they differ for 278 counts in 2..1000, 21 and 35
    among them; at 21 steps DiT takes t = 499, not 500. A single step is t = 0 in respace.py."""
    def multiplied(n):
        stride = 999 / (n - 1)
        return sorted({round(i * stride) for i in range(n)})
    differ = [n for n in range(2, 1001) if space_timesteps(n) != multiplied(n)]
    assert len(differ) == 278 and 21 in differ and 35 in differ, (len(differ), differ[:5])
    assert 499 in space_timesteps(21) and 500 not in space_timesteps(21)
    assert space_timesteps(1) == [0]
    assert all(len(space_timesteps(n)) == n for n in (2, 21, 50, 250, 1000))


def test_three_channel_guidance_is_dits_forward_with_cfg():
    """guided_channels=3 guides eps channels 0-2 and keeps channel 3 of the cond rows, as DiT's
    forward_with_cfg; the default guides all four."""
    def model(x, t, y):                     # eps = label / 10 per row, on every channel
        return (y.float() / 10).view(-1, 1, 1, 1).expand(-1, 8, 2, 2)
    x, t, y = torch.zeros(1, 4, 2, 2), torch.tensor([5]), torch.tensor([3])
    from lazydit.lazy_core.models.diffusion import label_guidance
    official = label_guidance(model, y, 4.0, 10, guided_channels=3)(x, t)
    every = label_guidance(model, y, 4.0, 10)(x, t)
    guided = 1.0 + 4.0 * (0.3 - 1.0)         # uncond + scale * (cond - uncond) = -1.8
    assert torch.allclose(every, torch.full_like(every, guided))
    assert torch.allclose(official[:, :3], torch.full_like(official[:, :3], guided))
    assert torch.allclose(official[:, 3], torch.full_like(official[:, 3], 0.3))
    out = GaussianDiffusion().ddim_sample(model, torch.ones(1, 4, 2, 2), y, 3, 4.0, 10, guided_channels=3)
    assert torch.isfinite(out).all() and not torch.allclose(out[:, 3], out[:, 0])


@pytest.mark.parametrize("text, expected", [
    ("207", [207]), ("0-3", [0, 1, 2, 3]), (" 1, 5 ,9 ", [1, 5, 9]), ("207: golden retriever", [207]),
    ("2 - 4, 0", [2, 3, 4, 0]), ("ALL", list(range(1000)))])
def test_label_grammar(text, expected):
    """Indices, ranges, comments after a colon and 'all' mean the same wherever labels are written."""
    assert parse_labels(text, 1000) == expected


def test_label_names_of_the_demo_model():
    """Class names are labels where the model has names (any case), and ranges work beside them."""
    assert parse_labels("Sneaker, bag, 0-1", 10, CLASSES) == [7, 8, 0, 1]
    with pytest.raises(LabelError, match="'Sneaker' is not a class index"):
        parse_labels("Sneaker", 1000)


@pytest.mark.parametrize("text, message", [
    ("0-20000000", "'0-20000000' is outside this model's 1000 classes; write indices in 0..999"),
    ("1000", "'1000' is outside this model's 1000 classes"),
    ("²", "entry '²' is not a class index, a range a-b or 'all'"),
    ("٣", "entry '٣' is not a class index"),
    ("9-3", "range '9-3' runs backwards; write it low to high, e.g. '3-9'"),
    ("", "labels is empty"),
    (" , ,", "labels is empty"),
    ("0-999," * 5, f"asks for more than {MAX_LABELS} labels"),
    ("1," * 40000, "is longer than 65536 characters"),
    ("-3", "entry '-3' is not a class index"),
])
def test_label_errors_are_short_and_name_the_entry(text, message):
    """Every bad label text raises a LabelError under 1 KB that names the entry and the fix."""
    with pytest.raises(LabelError) as err:
        parse_labels(text, 1000)
    assert message in str(err.value), str(err.value)
    assert len(str(err.value)) < 1024
