"""The block-level lazy path on ComfyUI's other DiT families, through their own model classes (tiny random
configurations, tests/tiny_families.py) and core sampling: exact at interval 1, lazy where asked."""

import logging
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_families  # noqa: E402


@pytest.mark.parametrize("name", tiny_families.FAMILIES)
def test_family_block_cache_is_exact_at_interval_1_and_lazy_at_2(comfy, name):
    import torch
    from lazydit.nodes.lazy_hook import session_of
    from lazydit.nodes.sibling_nodes import ForaNode

    patcher, pos, neg, latent = tiny_families.build(name)
    exact = tiny_families.sample(patcher, pos, neg, latent)
    one = ForaNode.execute(patcher, 1).result[0]
    assert torch.equal(tiny_families.sample(one, pos, neg, latent), exact)
    two = ForaNode.execute(patcher, 2, "extrapolate").result[0]
    lazy = tiny_families.sample(two, pos, neg, latent, steps=6)
    report = session_of(two).report
    assert report["ratio"] == pytest.approx(0.5, abs=0.01)
    assert report["macs_share"] == pytest.approx(0.5, abs=0.01)
    assert sorted(s["label"] for s in report["streams"]) == ["negative", "positive"]    # cond, uncond apart
    assert torch.isfinite(lazy).all()
    assert not torch.equal(lazy, tiny_families.sample(patcher, pos, neg, latent, steps=6))


def test_delta_dit_is_refused_on_a_block_family(comfy):
    from lazydit.nodes.sibling_nodes import DeltaDiTNode

    patcher, *_ = tiny_families.build("flux")
    with pytest.raises(Exception, match="lazy a whole block at a time"):
        DeltaDiTNode.execute(patcher, 0.5, 0.5, 2)


@pytest.mark.parametrize("name", tiny_families.FAMILIES)
def test_family_sensitivity_schedule_measures_plans_and_runs(comfy, caplog, name):
    import torch
    from lazydit.lazy_core.engine.gates import GateBank
    from lazydit.nodes.lazy_hook import session_of
    from lazydit.nodes.lazy_nodes import ApplyLazyGates
    from lazydit.nodes.train_node import SensitivitySchedule

    patcher, pos, neg, latent = tiny_families.build(name)
    updates = []
    import comfy.utils
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        gates_patcher, text = SensitivitySchedule.execute(patcher, "all", 2, 3.0, 0, f"tiny_{name}", pos, neg,
                                                          latent).result
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    import folder_paths
    os.remove(os.path.join(folder_paths.base_path, text[len("saved "):].split(";")[0]))    # keep the folder as it was
    gates = gates_patcher.model
    assert isinstance(gates, GateBank) and gates.static and gates.longest_chain == 4
    assert gates.info.architecture == name and "770 guided evaluations" in text
    assert updates[-1][0] == updates[-1][1] >= 770                     # every model call counted, to the end
    assert "predicted PSNR" in text and gates.info.recipe["calibration_per_steps"][20][-1][1] >= 0.75
    exact = tiny_families.sample(patcher, pos, neg, latent, steps=20)
    zero = ApplyLazyGates.execute(patcher, gates_patcher, 0.0, 4, "auto", "auto").result[0]
    assert torch.equal(tiny_families.sample(zero, pos, neg, latent, steps=20), exact)     # laziness 0: exact
    lazy_model = ApplyLazyGates.execute(patcher, gates_patcher, 0.5, 4, "auto", "auto").result[0]
    lazy = tiny_families.sample(lazy_model, pos, neg, latent, steps=20)
    report = session_of(lazy_model).report
    assert 0.25 <= report["ratio"] <= 0.55 and torch.isfinite(lazy).all()
    assert not torch.equal(lazy, exact)
    # A few-step run: the plan finds nothing cheap enough, and says so (the schedule's text said it too).
    assert "at 4 steps the plan makes nothing lazy" in text
    with caplog.at_level(logging.WARNING):
        tiny_families.sample(lazy_model, pos, neg, latent, steps=4)
    assert session_of(lazy_model).report["ratio"] == 0 and "at 4 steps this schedule makes nothing lazy" in caplog.text


def test_family_schedule_keeps_residuals_in_ram_or_refuses_by_free_memory(comfy, monkeypatch):
    """After the first step the schedule checks its window of residuals against the free memory: kept where
    they are if they fit, moved to system RAM if only that has room (the same costs), else a refusal that
    names `images` and the latent."""
    import torch
    from lazydit.nodes import family_schedule as fs

    patcher, pos, neg, latent = tiny_families.build("flux")
    plain = fs.measure(patcher, pos, neg, latent, 2, 3.0, 0, 6)
    monkeypatch.setattr(fs, "accelerator", lambda: torch.device("cuda"))      # as if sampling on a GPU
    monkeypatch.setattr(fs, "free_memory", lambda device: 2 ** 40 if device.type == "cpu" else 1)
    moved = fs.measure(patcher, pos, neg, latent, 2, 3.0, 0, 6)
    assert torch.equal(plain.chain, moved.chain) and torch.isfinite(plain.chain[1:, 0]).all()
    monkeypatch.setattr(fs, "free_memory", lambda device: 1)
    with pytest.raises(ValueError, match="set `images` lower or measure on a smaller latent"):
        fs.measure(patcher, pos, neg, latent, 2, 3.0, 0, 6)
