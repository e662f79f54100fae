"""Many scan times on many devices: `scene predict --devices N` shards the times over Lightning's predict loop.

Each process (one per GPU, or per CPU worker) loads the checkpoints once on its own device and runs its
share of the times; Lightning's Trainer starts the processes (DDP) and its launchers reach several nodes
(SLURM, torchrun), so nothing here schedules work itself. The output folder is the record of what is
done: a time whose folder holds `scene.json` is finished, so a re-run skips it and the launching process
reports the ones that are not.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from segladder.scene.pipeline import DONE_FILE, SceneOptions, ScenePredictor
from segladder.scene.predict import time_folder


class _Times(Dataset):
    """This process's share of the times (every world-size-th one), as ISO strings."""

    def __init__(self, times: Sequence[datetime], rank: int, world: int):
        self.times = [t.isoformat() for t in list(times)[rank::world]]

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, i: int) -> str:
        return self.times[i]


class ScenePredictTask(L.LightningModule):
    """Runs `ScenePredictor` on each time a predict step gets, into OUT/<time>/.

    Args:
        checkpoints: segmentation checkpoints.
        goes: ABI files or folders.
        options: `scene predict`'s options (the device is each process's own).
        out: the output folder.
    """

    def __init__(self, checkpoints: Sequence[Path], goes: Sequence[Path], options: SceneOptions, out: Path):
        super().__init__()
        self.checkpoints, self.goes, self.options, self.out = (
            list(checkpoints),
            list(goes),
            options,
            Path(out),
        )
        self.predictor: ScenePredictor | None = None

    def setup(self, stage: str) -> None:
        """Load the models on this process's device."""
        device = self.trainer.strategy.root_device
        options = SceneOptions(**{**self.options.__dict__, "device": str(device), "progress": False})
        self.predictor = ScenePredictor(self.checkpoints, self.goes, options)

    def predict_step(self, batch: list[str], batch_idx: int) -> list[dict]:
        """One time (a batch of one): its map, or the error that stopped it."""
        from segladder.errors import SegladderError

        done = []
        for text in batch:
            t = datetime.fromisoformat(text)
            try:
                r = self.predictor.run(t, self.out / time_folder(t))
                done.append({"time": text, "contrails": r.contrails, "skipped": r.skipped})
            except SegladderError as exc:  # the others go on; the launcher lists what is unfinished
                print(f"{time_folder(t)} failed: {exc}", file=sys.stderr, flush=True)
                done.append({"time": text, "error": str(exc)})
        return done

    def configure_optimizers(self):  # noqa: D102 - predicting only
        return None


def _collate(items: list[str]) -> list[str]:
    return items


def predict_times_distributed(
    checkpoints: Sequence[Path],
    goes: Sequence[Path],
    options: SceneOptions,
    times: Sequence[datetime],
    out: Path,
    *,
    devices: int,
    accelerator: str = "auto",
    strategy: str = "ddp",
) -> tuple[list[datetime], list[datetime], bool]:
    """Run every time over `devices` processes.

    Returns the finished and unfinished times, read from OUT afterwards, and whether this process is the
    main one (rank 0), which reports them.
    """
    task = ScenePredictTask(checkpoints, goes, options, out)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_progress_bar=options.progress,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the dataset shards itself: a padded sampler would run a time twice
    )

    class _Loader(L.LightningDataModule):
        def predict_dataloader(self):
            return DataLoader(
                _Times(times, trainer.global_rank, trainer.world_size), batch_size=1, collate_fn=_collate
            )

    torch.set_num_threads(max(1, torch.get_num_threads() // max(devices, 1)))
    trainer.predict(task, datamodule=_Loader(), return_predictions=False)
    finished = [t for t in times if (out / time_folder(t) / DONE_FILE).is_file()]
    return finished, [t for t in times if t not in finished], trainer.global_rank == 0
