"""Worker-to-main batch hand-over through reused, pre-faulted shared-memory slots (no page faults per batch)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

from segladder.errors import DataError
from segladder.progress import console

# Rings of the collate objects alive in this process, by id: what a `SlotBatch` names when it is resolved
# (in the main process, by the loader's iterator or by torch's pin-memory thread).
_RINGS: weakref.WeakValueDictionary[int, _Ring] = weakref.WeakValueDictionary()
_RING_IDS = itertools.count()

# The shared header, a row per worker: the ring's next slot, the iterator (token) whose worker owns the ring,
# then per slot its generation (odd while being written, even once published) and the token of the iterator
# whose batch it holds (0: free). Tokens count the loader's iterators, so a worker process has one of its own.
_NEXT, _OWNER, _SLOTS = 0, 1, 2


class _Ring:
    """The slots of every worker of one loader: shared tensors allocated and touched once, in the main process.

    A slot is written by one worker process and freed by the main process once it has copied the batch
    out; a worker whose slots all still hold unread batches falls back to PyTorch's own hand-over, so a
    consumer that holds batches slows the loader down but never sees them change.
    """

    def __init__(
        self,
        fields: dict[str, tuple[tuple[int, ...], torch.dtype]],
        batch_size: int,
        workers: int,
        slots: int,
        context,
    ):
        self.id, self.batch_size, self.workers, self.slots = next(_RING_IDS), batch_size, workers, slots
        self.fields = fields
        # zero_() faults every page in here, once; a forked worker maps the same pages (a minor fault each,
        # once per worker process) instead of PyTorch's fresh segment a batch, allocated and zeroed each time.
        self.data = [
            [
                {
                    name: torch.empty((batch_size, *shape), dtype=dtype).share_memory_().zero_()
                    for name, (shape, dtype) in fields.items()
                }
                for _ in range(slots)
            ]
            for _ in range(workers)
        ]
        self.header = torch.zeros((workers, _SLOTS + 2 * slots), dtype=torch.int64).share_memory_()
        self.lock = context.Lock()  # guards claims, publications and frees; the copies run outside it
        _RINGS[self.id] = self

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for ring in self.data for slot in ring for t in slot.values())

    def _gen(self, worker: int, slot: int) -> torch.Tensor:
        return self.header[worker, _SLOTS + slot]

    def _holder(self, worker: int, slot: int) -> torch.Tensor:
        return self.header[worker, _SLOTS + self.slots + slot]

    def claim(self, worker: int, token: int) -> tuple[int, int] | None:
        """(slot, odd generation) to write next, or None: fall back to PyTorch's hand-over for this batch.

        A DataLoader iterator can start the next epoch's workers before the previous (unfinished) epoch's
        workers have stopped (Lightning does), and both have the same worker ids: the newest iterator's
        worker takes the ring over, and the older one gets None from then on. The owner takes a free slot,
        else one left by an older iterator (batches nobody will read, unless two iterators of one loader are
        read at once: then the older one's reader gets a clear error), never one holding its own unread batch.
        """
        h = self.header[worker]
        with self.lock:
            if int(h[_OWNER]) > token:
                return None
            h[_OWNER] = token
            start = int(h[_NEXT])
            order = [(start + j) % self.slots for j in range(self.slots)]
            holders = [int(self._holder(worker, k)) for k in order]
            k = next((k for k, p in zip(order, holders, strict=True) if p == 0), None)
            if k is None:
                k = next((k for k, p in zip(order, holders, strict=True) if p != token), None)
            if k is None:
                return None
            h[_NEXT] = k + 1
            gen = int(self._gen(worker, k)) + 1
            self._gen(worker, k).fill_(gen)
            self._holder(worker, k).fill_(token)
        return k, gen

    def publish(self, worker: int, slot: int, gen: int) -> bool:
        """Mark the slot written; False when it was taken over meanwhile (its bytes are then not ours)."""
        with self.lock:
            if int(self._gen(worker, slot)) != gen:
                return False
            self._gen(worker, slot).fill_(gen + 1)
        return True

    def read(self, ref: SlotBatch, pin: bool) -> dict:
        """Copy a published slot out (into pinned memory when `pin`), checked before and after; then free it."""
        self._check(ref)
        slot = self.data[ref.worker][ref.slot]
        batch = dict(ref.rest)
        for name, t in slot.items():
            src = t[: ref.size]
            batch[name] = torch.empty(src.shape, dtype=src.dtype, pin_memory=pin).copy_(src)
        self._check(ref)
        with self.lock:
            if int(self._gen(ref.worker, ref.slot)) == ref.generation:
                self._holder(ref.worker, ref.slot).fill_(0)
        return {name: batch[name] for name in ref.order}

    def _check(self, ref: SlotBatch) -> None:
        if int(self._gen(ref.worker, ref.slot)) != ref.generation:
            raise DataError(
                f"DataLoader hand-over: worker {ref.worker}'s shared-memory slot {ref.slot} was rewritten "
                "before the main process copied its batch out (were two iterators of one DataLoader read "
                "at once?); the batch is refused rather than mixed. Read one iterator at a time, or set "
                "data.num_workers=0."
            )


@dataclass
class SlotBatch:
    """What a worker returns instead of a batch: where its tensors lie, and the small non-tensor fields.

    `pin_memory()` is what torch's pin-memory thread calls on it: the copy out of the slot is the pinning copy.
    """

    ring: int
    worker: int
    slot: int
    generation: int
    size: int
    order: tuple[str, ...]
    rest: dict = field(default_factory=dict)

    def resolve(self, pin: bool = False) -> dict:
        """The batch copied out of its slot (into pinned memory with `pin`), which frees the slot."""
        ring = _RINGS.get(self.ring)
        if ring is None:
            raise DataError("DataLoader hand-over: a batch outlived its loader's shared-memory slots.")
        return ring.read(self, pin)

    def pin_memory(self, device: Any = None) -> dict:
        """The batch copied out of its slot straight into pinned memory."""
        return self.resolve(pin=True)


class SlotCollate:
    """`collate_fn` handing batches from workers to the main process through reused shared-memory slots.

    PyTorch's default collation in a worker stacks each batch into a fresh shared-memory segment, and
    every page of it is faulted twice (written in the worker, read in the main process): on a small VM
    that cost ten times the copy itself. Here each worker owns a ring of `slots` batch-sized buffers,
    allocated and touched once in the main process (`prepare`, called by `SlotHandoverLoader` before its
    workers start), reused every batch and every epoch. A worker stacks its samples into a free slot and
    returns a `SlotBatch`; the main process copies it out (`SlotHandoverLoader`, or the pin-memory thread
    straight into pinned memory) and frees the slot. A worker never rewrites a slot whose batch is unread
    (it falls back to PyTorch's hand-over for that batch), and a generation counter per slot, checked
    before and after the copy, turns any slot rewritten under a reader into a `DataError`, never into
    silently mixed batches.

    Samples must be dicts whose tensors have the shapes and dtypes of sample 0 (the uint8 training items);
    anything else (a partial dict, another shape, no worker) is collated by `default_collate`, as before.

    Args:
        dataset: the loader's dataset; sample 0 gives the tensor fields' shapes and dtypes.
        batch_size: the most samples a batch holds (slot size).
        slots: slots a worker; default `prefetch_factor + 2`: a worker runs at most `prefetch_factor`
            batches ahead of the main process's copy, plus one spare.
    """

    def __init__(self, dataset, batch_size: int, slots: int | None = None):
        self.dataset, self.batch_size, self.requested_slots = dataset, batch_size, slots
        self._ring: _Ring | None = None
        self._token = 0  # counts prepare() calls, i.e. iterators; each one's workers carry its value
        self._declined = False

    def prepare(self, loader: DataLoader) -> None:
        """Allocate the rings for `loader`'s workers (main process, before they start); kept across epochs.

        Called once per iterator, before its workers start: they inherit a token newer than any before.
        """
        self._token += 1
        workers = loader.num_workers
        slots = self.requested_slots or (loader.prefetch_factor or 2) + 2
        ring = self._ring
        if self._declined or (ring is not None and ring.workers >= workers and ring.slots == slots):
            return
        sample = self.dataset[0]
        if not isinstance(sample, dict):
            return
        fields = {k: (tuple(v.shape), v.dtype) for k, v in sample.items() if isinstance(v, torch.Tensor)}
        if not fields:
            return
        need = sum(int(torch.Size(shape).numel()) * dtype.itemsize for shape, dtype in fields.values())
        need *= self.batch_size * workers * slots
        free = shared_memory_free()
        if free is not None and need > free // 2:
            # Leave room for PyTorch's own shared tensors; without the slots the loader still works.
            console.print(
                f"[yellow]DataLoader hand-over:[/] the workers' slots need {need / 2**20:.1f} MiB of shared "
                f"memory and /dev/shm has {free / 2**20:.1f} MiB free: using PyTorch's hand-over (slower). "
                "Enlarge /dev/shm (docker --shm-size) or lower data.num_workers or data.batch_size."
            )
            self._declined = True  # said once, not every epoch
            return
        context = loader.multiprocessing_context
        if context is None:
            context = multiprocessing.get_context()
        elif isinstance(context, str):
            context = multiprocessing.get_context(context)
        self._ring = _Ring(fields, self.batch_size, workers, slots, context)

    def __getstate__(self) -> dict:
        # A spawned worker gets the dataset from its DataLoader; here only the ring (handles) travels.
        return {**self.__dict__, "dataset": None}

    @property
    def slots(self) -> int | None:
        """Slots per worker, once the rings are allocated; else None."""
        return None if self._ring is None else self._ring.slots

    @property
    def nbytes(self) -> int:
        """Bytes of shared memory the rings hold (0 before they are allocated)."""
        return 0 if self._ring is None else self._ring.nbytes

    @property
    def handed_over(self) -> int:
        """Batches the workers have handed over through slots so far (all epochs; fallbacks not counted)."""
        if self._ring is None:
            return 0
        return int(self._ring.header[:, _SLOTS : _SLOTS + self._ring.slots].sum()) // 2

    def __call__(self, samples: Sequence[dict]):
        """Stack `samples` into a free slot of this worker's ring; else collate them as PyTorch does."""
        info = get_worker_info()
        ring = self._ring
        if info is None or ring is None or info.id >= ring.workers or not self._fits(samples, ring):
            return default_collate(samples)
        claimed = ring.claim(info.id, self._token)
        if claimed is None:
            return default_collate(samples)
        k, gen = claimed
        slot, n = ring.data[info.id][k], len(samples)
        for name, out in slot.items():
            torch.stack([s[name] for s in samples], out=out[:n])
        if not ring.publish(info.id, k, gen):
            return default_collate(samples)
        rest = default_collate([{k2: v for k2, v in s.items() if k2 not in slot} for s in samples])
        return SlotBatch(ring.id, info.id, k, gen + 1, n, tuple(samples[0]), rest)

    @staticmethod
    def _fits(samples: Sequence[dict], ring: _Ring) -> bool:
        if not 0 < len(samples) <= ring.batch_size:
            return False
        for s in samples:
            if not isinstance(s, dict):
                return False
            for name, (shape, dtype) in ring.fields.items():
                v = s.get(name)
                if not isinstance(v, torch.Tensor) or v.dtype != dtype or tuple(v.shape) != shape:
                    return False
        return True


class _Resolving(Iterator):
    """A DataLoader iterator whose `SlotBatch`es become batches as they come out (no batch is held in a slot)."""

    def __init__(self, inner):
        self._inner = inner

    def __next__(self):
        batch = next(self._inner)
        return batch.resolve() if isinstance(batch, SlotBatch) else batch

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str):
        if name == "_inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)


class SlotHandoverLoader(DataLoader):
    """A DataLoader that prepares a `SlotCollate`'s slots before its workers start and yields plain batches.

    Its constructor is DataLoader's own, so Lightning can re-create it (e.g. with a distributed sampler);
    the collate object, and with it the slots, is carried over as the `collate_fn` argument.
    """

    def __iter__(self):
        if self.num_workers > 0 and isinstance(self.collate_fn, SlotCollate):
            self.collate_fn.prepare(self)
        return _Resolving(super().__iter__())


def shared_memory_free() -> int | None:
    """Bytes free in /dev/shm, where PyTorch puts shared tensors (None where there is no such folder)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def describe_handover(loader: DataLoader) -> str:
    """Which worker-to-main hand-over `loader` uses, in words (for benchmark reports)."""
    if loader.num_workers == 0:
        return "none (main process)"
    collate = loader.collate_fn
    if isinstance(loader, SlotHandoverLoader) and isinstance(collate, SlotCollate):
        if collate.slots is None:
            return "reused shared-memory slots (not allocated yet)"
        return (
            f"reused shared-memory slots ({collate.slots} a worker, {collate.nbytes / 2**20:.0f} MiB in all)"
        )
    return "PyTorch default (a fresh shared-memory segment a batch)"
