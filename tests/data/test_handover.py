"""The workers' batch hand-over through reused shared-memory slots: same batches, slots reused, never mixed."""

import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from segladder.data.cache import CacheOptions, prepare_cache
from segladder.data.datasets import ContrailsDataset
from segladder.data.handover import SlotBatch, SlotCollate, SlotHandoverLoader, describe_handover
from segladder.data.module import EpochSeededSampler, make_loader
from segladder.errors import DataError


@pytest.fixture(scope="module")
def uint8_set(synth_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("handover") / "cache"
    prepare_cache(
        synth_root, cache, CacheOptions(frames=(3, 4), image_size=32), ["train"], workers=1, progress=False
    )
    ds = ContrailsDataset(cache, "train", frames=[3, 4], image_size=32, output_dtype="uint8")
    assert ds.emits_uint8 and len(ds) == 12
    return ds


def assert_same_batches(got, ref):
    assert len(got) == len(ref)
    for a, b in zip(got, ref, strict=True):
        assert isinstance(a, dict) and list(a) == list(b)
        for key in b:
            if torch.is_tensor(b[key]):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


def test_workers_hand_over_through_reused_slots_the_default_collate_batches(uint8_set):
    sampler = EpochSeededSampler(len(uint8_set), seed=4)
    loader = make_loader(uint8_set, batch_size=5, num_workers=2, sampler=sampler)  # 5, 5, 2: a partial batch
    plain = DataLoader(uint8_set, batch_size=5, sampler=sampler)
    assert isinstance(loader, SlotHandoverLoader) and isinstance(loader.collate_fn, SlotCollate)
    collate = loader.collate_fn
    for epoch in range(4):  # fresh worker processes every epoch, the same slots
        sampler.set_epoch(epoch)
        assert_same_batches(list(loader), list(plain))
        if epoch == 0:
            ring = collate._ring
        assert collate._ring is ring  # allocated once, kept across epochs
    assert collate.slots == loader.prefetch_factor + 2
    # Every batch of the four epochs (3 an epoch) went through a slot; none fell back to PyTorch's way.
    assert collate.handed_over == 4 * 3
    assert "reused shared-memory slots (4 a worker" in describe_handover(loader)


def test_no_workers_or_float_items_get_a_plain_loader(uint8_set, synth_root):
    loader = make_loader(uint8_set, batch_size=4, num_workers=0)
    assert type(loader) is DataLoader and describe_handover(loader) == "none (main process)"
    raw = ContrailsDataset(synth_root, "train", frames=[3, 4], image_size=32, output_dtype="uint8")
    assert not raw.emits_uint8
    assert type(make_loader(raw, batch_size=4, num_workers=2)) is DataLoader
    # In the main process the collate object is default_collate.
    items = [uint8_set[i] for i in range(3)]
    assert_same_batches([SlotCollate(uint8_set, 4)(items)], [default_collate(items)])


def _references(ds, collate, batch_size=3):
    """Every batch of an epoch as the workers returned it (SlotBatch or dict), none copied out yet."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=2, collate_fn=collate)
    collate.prepare(loader)
    return list(loader)


def test_a_held_batch_is_never_rewritten_the_worker_falls_back(uint8_set):
    collate = SlotCollate(uint8_set, 3, slots=1)
    refs = _references(uint8_set, collate)  # 4 batches, 2 a worker, one slot a worker, nothing read
    # Each worker's first batch took its slot; its second found the slot unread and took PyTorch's way.
    assert [type(r) for r in refs] == [SlotBatch, SlotBatch, dict, dict]
    got = [r.resolve() if isinstance(r, SlotBatch) else r for r in refs]
    assert_same_batches(got, list(DataLoader(uint8_set, batch_size=3)))


def test_a_slot_rewritten_under_its_reader_is_a_clear_error(uint8_set):
    collate = SlotCollate(uint8_set, 3, slots=1)
    stale = _references(uint8_set, collate)
    # A second iterator's workers (other processes) take the rings over and reuse the unread slots.
    fresh = _references(uint8_set, collate)
    assert isinstance(stale[0], SlotBatch) and isinstance(fresh[0], SlotBatch)
    with pytest.raises(DataError, match="slot 0 was rewritten before the main process copied"):
        stale[0].resolve()
    assert_same_batches([fresh[0].resolve()], [default_collate([uint8_set[i] for i in range(3)])])


def test_lightning_can_recreate_the_loader_with_a_distributed_sampler(uint8_set):
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    loader = make_loader(uint8_set, batch_size=4, num_workers=2)
    shard = DistributedSampler(uint8_set, num_replicas=2, rank=1, shuffle=False)
    again = _update_dataloader(loader, shard)
    assert isinstance(again, SlotHandoverLoader) and again.collate_fn is loader.collate_fn
    assert_same_batches(list(again), list(DataLoader(uint8_set, batch_size=4, sampler=shard)))
    assert loader.collate_fn.handed_over == 2


@pytest.mark.medium
def test_training_with_workers_matches_training_in_the_main_process(train_cache, tmp_path, monkeypatch):
    """Two short epochs (cut by limit_train_batches, so Lightning starts epoch 1's workers beside epoch 0's)."""
    from segladder.training.run import train
    from tests.training.conftest import quick_config

    resolved = []
    resolve = SlotBatch.resolve
    monkeypatch.setattr(
        SlotBatch, "resolve", lambda ref, pin=False: resolved.append(ref) or resolve(ref, pin)
    )
    metrics = {}
    for workers in (0, 2):
        cfg = quick_config(
            train_cache,
            **{"data.num_workers": workers, "trainer.limit_train_batches": 3, "trainer.overlays": 1},
        )
        metrics[workers] = train(cfg, out=tmp_path / f"w{workers}").metrics["epochs"]
    # 2 × 3 training batches and 2 × 2 validation batches, each through a slot
    assert len(resolved) >= 10 and len(metrics[2]) == 2
    for a, b in zip(metrics[0], metrics[2], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key != "samples_per_s":  # the one timing
                assert a[key] == pytest.approx(b[key], abs=1e-6), key


@pytest.mark.medium
def test_spawned_workers_get_the_slots_too(uint8_set):
    loader = make_loader(uint8_set, batch_size=6, num_workers=1)
    loader.multiprocessing_context = (
        "spawn"  # pickles the collate object (forkserver, Python ≥ 3.14's default)
    )
    assert_same_batches(list(loader), list(DataLoader(uint8_set, batch_size=6)))
    assert loader.collate_fn.handed_over == 2


def test_too_little_shared_memory_falls_back_with_one_line(uint8_set, monkeypatch, capsys):
    from segladder.data import handover

    monkeypatch.setattr(handover, "shared_memory_free", lambda: 1 << 16)
    loader = make_loader(uint8_set, batch_size=4, num_workers=2)
    assert_same_batches(list(loader), list(DataLoader(uint8_set, batch_size=4)))
    assert loader.collate_fn.handed_over == 0 and loader.collate_fn.slots is None
    assert "/dev/shm has 0.1 MiB free: using PyTorch's hand-over" in capsys.readouterr().err.replace(
        "\n", " "
    )
    list(loader)  # the next epoch: said once
    assert "hand-over" not in capsys.readouterr().err


@pytest.mark.gpu
def test_pinned_batches_are_copied_from_the_slots_straight_into_pinned_memory(uint8_set):
    loader = make_loader(uint8_set, batch_size=5, num_workers=2)
    assert loader.pin_memory
    batches = list(loader)
    assert all(b["image"].is_pinned() and b["mask"].is_pinned() for b in batches)
    assert_same_batches(batches, list(DataLoader(uint8_set, batch_size=5)))
    assert loader.collate_fn.handed_over == 3
