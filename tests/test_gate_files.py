"""Gate files load strictly: every way a file can be unusable is a GateFileError that names the file, the
problem and the fix, raised on load (never later, inside a sampler)."""

import pytest
import torch
from lazydit.lazy_core.engine.gates import GateBank, GateFileError, GateInfo, from_reference
from safetensors.torch import save_file

DEPTH, WIDTH, BUCKETS = 2, 8, 3
NAN = float("nan")


def valid_bank():
    info = GateInfo("dit", DEPTH, WIDTH, [0, 500, 999], calibration=[[0.2, 0.1], [0.6, 0.4]])
    g = torch.Generator().manual_seed(0)
    return GateBank(info, torch.randn(DEPTH, 2, BUCKETS, WIDTH, generator=g))


def write(path, tensors=None, meta=None, drop=()):
    """A gate file: a valid bank's tensors and metadata, with some replaced or dropped."""
    bank = valid_bank()
    found = {"weight": bank.weight.detach(), "bias": bank.bias.detach(), "prior": bank.prior,
             "trained": bank.trained.to(torch.uint8)}
    found = {k: v.contiguous() for k, v in {**found, **(tensors or {})}.items() if k not in drop}
    metadata = {k: v for k, v in {**bank.info.to_metadata(), **(meta or {})}.items() if k not in drop}
    save_file(found, str(path), metadata=metadata)
    return path


CASES = {
    "format": (dict(meta={"format": "other"}), "is not a LazyDiT gate file (metadata format='other')"),
    "version text": (dict(meta={"version": "two"}), "metadata version 'two' is not a gate format version (1..2)"),
    "version zero": (dict(meta={"version": "0"}), "metadata version '0' is not a gate format version"),
    "version missing": (dict(drop=("version",)), "metadata version None is not a gate format version"),
    "version newer": (dict(meta={"version": "3"}), "has gate format version 3, newer than this pack"),
    "depth missing": (dict(drop=("depth",)), "metadata is incomplete or corrupt (KeyError('depth'))"),
    "width text": (dict(meta={"width": "wide"}), "metadata is incomplete or corrupt (ValueError"),
    "timesteps json": (dict(meta={"timesteps": "[0, 5"}), "metadata is incomplete or corrupt (JSONDecodeError"),
    "depth zero": (dict(meta={"depth": "0"}), "depth 0 / width 8 / tokens 0 must be positive"),
    "timesteps empty": (dict(meta={"timesteps": "[]"}), "timesteps [] must be a non-empty list"),
    "timesteps nan": (dict(meta={"timesteps": "[0, NaN, 999]"}), "timesteps [0, nan, 999] must be finite"),
    "timesteps order": (dict(meta={"timesteps": "[999, 500, 0]"}), "must be finite, in 0..999 and ascending"),
    "timesteps range": (dict(meta={"timesteps": "[0, 500, 1999]"}), "must be finite, in 0..999 and ascending"),
    "timesteps text": (dict(meta={"timesteps": '"0,500,999"'}), "must be a non-empty list of bucket timesteps"),
    "calibration row": (dict(meta={"calibration": "[[0.5]]"}), "calibration [[0.5]] must be a list of finite"),
    "calibration nan": (dict(meta={"calibration": "[[NaN, 0.5]]"}), "calibration [[nan, 0.5]] must be"),
    "calibration ratio": (dict(meta={"calibration": "[[0.5, 7]]"}), "lazy ratio in 0..1"),
    "recipe": (dict(meta={"recipe": "[1]"}), "recipe [1] must be a JSON object"),
    "pooling": (dict(meta={"pooling": "max"}), "unknown pooling 'max'"),
    "score": (dict(meta={"score": "odds"}), "unknown gate score 'odds'"),
    "granularity": (dict(meta={"granularity": "row"}), "unknown gate granularity 'row'"),
    "weight shape": (dict(meta={"depth": "3"}), "gate weight has shape (2, 2, 3, 8), metadata says (3, 2, 3, 8)"),
    "bias shape": (dict(tensors={"bias": torch.zeros(DEPTH, 2, 4)}), "gate bias has shape (2, 2, 4)"),
    "prior shape": (dict(tensors={"prior": torch.zeros(DEPTH, 2)}), "gate prior has shape (2, 2)"),
    "trained shape": (dict(tensors={"trained": torch.ones(DEPTH, 2, 1, dtype=torch.uint8)}),
                      "gate `trained` mask has shape (2, 2, 1), metadata says (2, 2, 3)"),
    "weight nan": (dict(tensors={"weight": torch.full((DEPTH, 2, BUCKETS, WIDTH), NAN)}),
                   "gate weight holds NaN or inf values"),
    "bias inf": (dict(tensors={"bias": torch.full((DEPTH, 2, BUCKETS), float("inf"))}),
                 "gate bias holds NaN or inf values"),
    "prior -inf": (dict(tensors={"prior": torch.full((DEPTH, 2, BUCKETS), -float("inf"))}),
                   "gate prior holds NaN or inf values"),
    "no trained": (dict(drop=("trained",)), "lacks tensors ['trained']: not a complete LazyDiT gate file"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_broken_gate_files_are_refused_on_load(tmp_path, case):
    """Each broken file raises a short GateFileError that starts with the file's name."""
    change, message = CASES[case]
    path = write(tmp_path / "g.safetensors", **change)
    with pytest.raises(GateFileError) as err:
        GateBank.load(path, name="my_gates.safetensors")
    text = str(err.value)
    assert text.startswith("my_gates.safetensors") and message in text, text
    assert len(text) < 1024, len(text)


def test_unreadable_gate_file(tmp_path):
    """A truncated file is refused as unreadable, with the fix."""
    data = write(tmp_path / "g.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(GateFileError, match="cut.safetensors cannot be read as safetensors .*train it again"):
        GateBank.load(tmp_path / "cut.safetensors", name="cut.safetensors")


def test_valid_gate_file_round_trips(tmp_path):
    """The unbroken file of the cases above loads to the same weights, so each case fails for its change."""
    bank = GateBank.load(write(tmp_path / "g.safetensors"))
    assert torch.equal(bank.weight, valid_bank().weight) and bank.info.calibration == [[0.2, 0.1], [0.6, 0.4]]


def test_gates_for_another_model_and_empty_reference():
    """check_fits names both shapes and the fix; a reference checkpoint without gate keys is refused."""
    with pytest.raises(GateFileError, match="fit dit with depth 2 / width 8, but the model is dit with depth 28 "
                                            "/ width 1152: load gates trained for this model"):
        valid_bank().check_fits("dit", 28, 1152)
    with pytest.raises(GateFileError, match="no keys of the form block_"):
        from_reference({"model": {"blocks.0.weight": torch.zeros(2)}})
