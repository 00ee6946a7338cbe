"""Registration QA and per-subject fallback (issue 14), fast tier with a tiny model.

A pair that needs no registration keeps its overlap (identity wins, even against a network that
distorts it); a shifted and rotated pair improves (the rigid search finds it, beyond the network's
training range); the choice is recorded for segmentation and reported by evaluate.
"""

from __future__ import annotations

import torch
from conftest import make_subject

from mi_pipeline.metrics import dice
from mi_pipeline.stages import common, registration, registration_qa

CPU = torch.device("cpu")


def _pair(subject):
    return (torch.from_numpy(subject.lge), torch.from_numpy(subject.lge_label).long(),
            torch.from_numpy(subject.cine[:, 0]), common.myo(torch.from_numpy(subject.cine_label[:, 0]).long()))


def _dice(labels, truth) -> float:
    return dice(common.myo(labels.long()), truth)


class _Distorting(torch.nn.Module):
    """A 'trained' network that always pulls the image 3 px sideways with a wobble: what a network
    fitted to the wrong data does to a pair that needed nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, moving, fixed):
        n, _, h, w = moving.shape
        yy = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(n, 1, h, w)
        ddf = torch.cat([3.0 * torch.sin(yy / 4.0), torch.full_like(yy, 3.0)], dim=1)
        return ddf, ddf * 0.5, ddf * 0.5


def test_a_pair_needing_no_registration_keeps_its_overlap(tiny_cfg):
    for seed in (1, 2, 3):
        lge, label, cine_ed, truth = _pair(make_subject("a", seed, shift=0.0, slices=2))
        for model in (registration.build_model(tiny_cfg).eval(), _Distorting()):
            out, qa = registration.register_subject(tiny_cfg, model, lge, label, cine_ed, 1.6, "a")
            assert _dice(out, truth) >= _dice(label, truth) - 0.01
            assert qa.chosen in ("identity", "rigid")
        assert qa.scores["deformable"] < qa.scores["identity"]  # the QA sees the distortion


def test_a_shifted_and_rotated_pair_improves(tiny_cfg):
    torch.manual_seed(0)
    model = registration.build_model(tiny_cfg).eval()
    for seed in (1, 2):
        s = make_subject("b", seed, shift=5.0, slices=2)  # 8 mm at 1.6 mm: beyond training's augmentation
        lge, label, cine_ed, truth = _pair(s)
        rot = registration_qa.rigid_field(lge.shape[0], 32, 32, 8.0, (0.0, 0.0))
        lge = common.warp(lge.unsqueeze(1), rot)[:, 0]
        label = common.warp_labels(label, rot)
        out, qa = registration.register_subject(tiny_cfg, model, lge, label, cine_ed, 1.6, "b")
        assert qa.chosen != "identity" and qa.gain_over_identity > 0
        assert _dice(out, truth) > _dice(label, truth) + 0.3
        assert _dice(out, truth) > 0.85


def test_the_choice_rule():
    from mi_pipeline.config import load_config

    cfg = load_config(None, ["registration.qa_margin=0.02", "registration.qa_max_folding_percent=0.5"])
    same = {"identity": 0.30, "rigid": 0.31, "affine": 0.33, "deformable": 0.35}
    assert registration_qa.choose(cfg, same, 0.0)[0] == "identity"  # gains within the penalty
    better = {"identity": 0.20, "rigid": 0.31, "affine": 0.32, "deformable": 0.40}
    assert registration_qa.choose(cfg, better, 0.0)[0] == "deformable"
    assert registration_qa.choose(cfg, better, 2.0)[0] == "rigid"  # folding disqualifies deformable


def test_segmentation_records_the_choice_and_supervises_only_confident_targets(tiny_overrides, tmp_path, write_cache):
    import json

    from mi_pipeline.config import load_config
    from mi_pipeline.engine import checkpoint as ckpt
    from mi_pipeline.stages.registry import make_task

    cfg = load_config(None, tiny_overrides + ["segmentation.motion_features=false"])
    write_cache(tmp_path)
    torch.manual_seed(0)
    ckpt.save_checkpoint(tmp_path / "checkpoints" / "registration" / ckpt.BEST,
                         {"kind": "best", "stage": "registration", "model": registration.build_model(cfg).state_dict()})
    task = make_task("segmentation", cfg, tmp_path)
    task.setup(CPU)
    record = json.loads(task.qa_path.read_text())
    assert [r["subject"] for r in record["train"]] == ["tr0", "tr1", "tr2", "tr3"]
    assert {r["chosen"] for r in record["train"]} <= set(registration_qa.CANDIDATES)
    assert record["supervising_subjects"] and "registration QA" in task.notes()[0]
    assert task.num_train_samples() == 2 * len(record["supervising_subjects"])
