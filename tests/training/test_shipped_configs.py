"""Every config in configs/ trains: one tiny step of each through `segladder train`, as a user runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import run_many

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
TINY = [
    "data.image_size=32",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.accumulate_grad_batches=1",
    "trainer.progress=false",
    "trainer.overlays=0",
]
# What a config needs beyond the tiny sizes on a 2-core CPU without weights. 16-mixed needs CUDA, so the
# configs that ship it (coat_ulstm, unet25d) train here in bf16-mixed, which exercises the same clipping path.
EXTRA = {
    "coat_ulstm": ["model.pretrained=false", "trainer.precision=bf16-mixed"],
    "unet25d": ["model.input_size=64", "trainer.precision=bf16-mixed"],
    "unet25d_wide": ["model.input_size=64", "trainer.precision=bf16-mixed"],
    "ladder": ["model.name=ResNet18_SimplerFCN"],
    "snapper": ["data.coco.crop_size=64", "model.encoder=resnet18"],
    "sim2real": ["data.augment.crop_size=32"],
}


@pytest.mark.slow
def test_every_shipped_config_trains_a_step(synth_root, tmp_path):
    boxes = tmp_path / "boxes"
    cases: list[list] = [["boxes", "synth", boxes, "--train", "4", "--val", "2", "--size", "64"]]
    order = [c for c in CONFIGS if c != "distill_b0_from_b3"]
    for name in order:
        data = (
            [
                f"data.coco.images={boxes / 'images'}",
                f"data.coco.train={boxes / 'train.json'}",
                f"data.coco.val={boxes / 'val.json'}",
            ]
            if name == "snapper"
            else [f"data.root={synth_root}"]
        )
        cases.append(["train", name, "--out", tmp_path / name, "--set", *TINY, *data, *EXTRA.get(name, [])])
    if "distill_b0_from_b3" in CONFIGS:  # its teacher is the seg_unet_b3 run just trained
        teacher = tmp_path / "seg_unet_b3" / "checkpoints" / "best.ckpt"
        order.append("distill_b0_from_b3")
        cases.append(
            ["train", "distill_b0_from_b3", "--out", tmp_path / "distill", "--set", *TINY]
            + [f"data.root={synth_root}", f"distill.teacher={teacher}"]
        )
    results = run_many(cases, tmp_path, timeout=900)
    assert results[0].code == 0, str(results[0])
    for name, res in zip(order, results[1:], strict=True):
        assert res.code == 0, f"configs/{name}.yaml\n{res}"
        assert "Traceback" not in res.err + res.out, f"configs/{name}.yaml\n{res}"
        run = tmp_path / ("distill" if name == "distill_b0_from_b3" else name)
        assert (run / "checkpoints" / "last.ckpt").exists(), f"configs/{name}.yaml wrote no checkpoint\n{res}"
