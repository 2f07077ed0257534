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


#################################################################################
#                           Checkpoint files                                     #
#################################################################################

TINY = dict(input_size=8, depth=2, hidden_size=64, num_heads=1, num_classes=10)


def tiny_state_dict():
    from lazydit.lazy_core.models.dit import DiT, DiTConfig

    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in DiT(DiTConfig(**TINY)).state_dict().items()}


def with_config(**change):
    import json
    return {"config": json.dumps({**TINY, **change})}


def broken_checkpoints():
    """(file name, state dict or raw bytes, safetensors metadata, expected part of the error)."""
    sd = tiny_state_dict()

    def without(*keys):
        return {k: v for k, v in sd.items() if k not in keys}
    return [
        ("empty.pt", b"", None, "empty.pt is empty (0 bytes)"),
        ("nothing.pt", {}, None, "not a DiT checkpoint: keys ['x_embedder.proj.weight', "),
        ("list.pt", [1, 2], None, "holds a list, not a state dict"),
        ("strings.pt", {**sd, "note": "hello"}, None, "entries ['note'] are not tensors"),
        ("no_fc1.safetensors", without("blocks.0.mlp.fc1.weight"), None,
         "keys ['blocks.0.mlp.fc1.weight'] are missing"),
        ("flat.safetensors", {**sd, "x_embedder.proj.weight": torch.zeros(64, 16)}, None,
         "x_embedder.proj.weight has shape (64, 16), expected a non-empty 4-D tensor"),
        ("part.safetensors", without("blocks.1.mlp.fc2.weight"), None, "missing: blocks.1.mlp.fc2.weight"),
        ("extra.safetensors", {**sd, "extra.weight": torch.zeros(2)}, None, "unexpected: extra.weight"),
        ("shape.safetensors", {**sd, "t_embedder.mlp.2.weight": torch.zeros(64, 32)}, None,
         "wrong shape: t_embedder.mlp.2.weight (64, 32) (expected (64, 64))"),
        ("nan.safetensors", {**sd, "blocks.1.attn.qkv.weight": torch.full((192, 64), float("nan"))}, None,
         "1 of 32 tensors hold NaN or inf (blocks.1.attn.qkv.weight)"),
        ("heads7.safetensors", sd, with_config(num_heads=7), "num_heads 7, which does not divide the width 64"),
        ("depth.safetensors", sd, with_config(depth=3), "disagrees with its tensors: depth 3 (tensors: 2)"),
        ("classes.safetensors", sd, with_config(num_classes=1000), "num_classes 1000 (tensors: 10)"),
        ("dropout.safetensors", sd, with_config(class_dropout_prob="0.1"), "class_dropout_prob '0.1'"),
        ("unknown.safetensors", sd, with_config(layers=2), "the 'config' in its metadata is not a DiT config"),
        ("json.safetensors", sd, {"config": "{depth: 2"}, "the 'config' in its metadata is not a DiT config"),
    ]


@pytest.mark.parametrize("case", broken_checkpoints(), ids=lambda c: c[0])
def test_broken_checkpoints_give_clear_errors(tmp_path, case):
    """Every way a DiT file can be unusable is a short CheckpointError naming the file, the problem and the
    fix, raised before a model is built."""
    from lazydit.lazy_core.models.checkpoint import read_checkpoint
    from lazydit.lazy_core.models.dit import CheckpointError
    from safetensors.torch import save_file

    name, content, meta, message = case
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif name.endswith(".safetensors"):
        save_file(content, str(path), metadata=meta)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(str(path), name)
    text = str(err.value)
    assert text.startswith(name) and message in text, text
    assert len(text) < 1024, len(text)


def test_checked_checkpoint_loads(tmp_path):
    """A complete file with an agreeing metadata config passes every check, in both formats."""
    from lazydit.lazy_core.models.checkpoint import read_checkpoint
    from safetensors.torch import save_file

    sd = tiny_state_dict()
    save_file(sd, str(tmp_path / "ok.safetensors"), metadata=with_config())
    torch.save(sd, tmp_path / "ok.pt")
    for name in ("ok.safetensors", "ok.pt"):
        _, config = read_checkpoint(str(tmp_path / name))
        assert (config.depth, config.hidden_size, config.num_classes) == (2, 64, 10)
    assert read_checkpoint(str(tmp_path / "ok.safetensors"))[1].num_heads == 1, "metadata heads are used"
    assert read_checkpoint(str(tmp_path / "ok.pt"))[1].num_heads == 1, "width 64: the paper's width // 64"
