#!/usr/bin/env python
"""Sim-to-real and few real labels, scored on records nothing was chosen on (issue 35, items 3 and 4).

    python scripts/few_labels.py SAMPLE_ROOT OUT [--folds 3] [--ks 2,4,6] [--epochs 40] [--seed 0]

SAMPLE_ROOT's labelled records are cut into outer folds (`segladder data folds`, stratified by "has a
contrail"). For each outer fold, its records are held out and scored; the others are all that is used:
1. zero-shot: `INJECT=SAMPLE_ROOT scripts/sim2real.sh` injects contrails into the other records only
   (`--exclude-like` the held-out ones), trains, and scores the held-out records at the threshold chosen
   on injected validation records;
2. few labels: for k in KS, the first k of the other records (those with contrails first, then the rest,
   each in a seeded order) train a model twice, from scratch and from the injected model of step 1, with
   `segladder train --folds 2` over those k records alone: the epoch is each inner fold's best and the
   threshold and component size are chosen on the inner out-of-fold maps; `segladder evaluate --folds`
   then scores that fold ensemble on the held-out records.
Pooled global Dice over all outer folds goes to OUT/few_labels.json, OUT/few_labels.md and
OUT/few_labels.png. Every step runs a documented command; a re-run skips the steps already done.
Environment: SEGLADDER (segladder), as scripts/sim2real.sh.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "configs" / "sim2real.yaml"


def sh(cmd: list[str], env: dict | None = None) -> None:
    print("+", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})})


def segladder() -> list[str]:
    return shlex.split(os.environ.get("SEGLADDER", "segladder"))


def link_records(root: Path, records: list[tuple[str, str, Path]], split: str | None = None) -> None:
    """A dataset root of symbolic links to `records` (id, split, folder), in `split` or each in its own."""
    for rid, own, path in records:
        link = root / (split or own) / rid
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path.resolve(), target_is_directory=True)


def pooled(per_record_csv: Path) -> tuple[float, float, float]:
    """(true positives, predicted, true) pixels from `evaluate`'s per-record CSV at its stored threshold."""
    tp = pred = true = 0.0
    with open(per_record_csv) as f:
        for row in csv.DictReader(f):
            p, t, d = float(row["pred_pixels"]), float(row["true_pixels"]), float(row["dice"])
            tp += d * (p + t) / 2 if p + t else 0.0
            pred, true = pred + p, true + t
    return tp, pred, true


def dice(counts: list[tuple[float, float, float]]) -> float:
    tp, pred, true = (sum(c[i] for c in counts) for i in range(3))
    return 2 * tp / (pred + true) if pred + true else 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sample", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--ks", default="2,4,6")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    out, cli = args.out, segladder()
    out.mkdir(parents=True, exist_ok=True)
    folds_csv = out / "outer_folds.csv"
    if not folds_csv.exists():
        sh(
            [
                *cli,
                "data",
                "folds",
                str(args.sample),
                "--k",
                str(args.folds),
                "--pool",
                "train,validation",
                "--seed",
                str(args.seed),
                "--out",
                str(folds_csv),
            ]
        )
    with open(folds_csv) as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(args.seed)
    results: dict = {"zero_shot": [], "scratch": {k: [] for k in ks}, "injected": {k: [] for k in ks}}
    for fold in range(args.folds):
        fdir = out / f"fold{fold}"
        held = [
            (r["record_id"], r["split"], args.sample / r["split"] / r["record_id"])
            for r in rows
            if int(r["fold"]) == fold
        ]
        rest = [r for r in rows if int(r["fold"]) != fold]
        order = [rest[i] for i in rng.permutation(len(rest))]
        order = [r for r in order if r["has_contrail"] in ("1", "True", "true")] + [
            r for r in order if r["has_contrail"] not in ("1", "True", "true")
        ]
        link_records(fdir / "heldout", held, split="validation")
        inject = fdir / "inject"
        if (inject / "best.ckpt").exists() and not (
            inject / "eval-real-validation" / "per_record.csv"
        ).exists():
            sh(
                [
                    *cli,
                    "evaluate",
                    str(inject / "best.ckpt"),
                    "--data",
                    str(fdir / "heldout"),
                    "--split",
                    "validation",
                    "--out",
                    str(inject / "eval-real-validation"),
                ]
            )  # trained, but the scoring was interrupted
        if not (inject / "eval-real-validation" / "per_record.csv").exists():
            sh(
                ["bash", str(HERE / "sim2real.sh"), str(inject), str(fdir / "heldout"), "validation"],
                env={"INJECT": str(args.sample), "SEED": str(args.seed)},
            )
        results["zero_shot"].append(pooled(inject / "eval-real-validation" / "per_record.csv"))
        for k in ks:
            chosen = order[:k]
            kdir = fdir / f"k{k}"
            link_records(
                kdir / "real",
                [(r["record_id"], r["split"], args.sample / r["split"] / r["record_id"]) for r in chosen],
            )
            splits = sorted({r["split"] for r in chosen}, key=["train", "validation"].index)
            if not (kdir / "cache").exists():
                sh(
                    [
                        *cli,
                        "data",
                        "prepare",
                        str(kdir / "real"),
                        "--out",
                        str(kdir / "cache"),
                        "--frames",
                        "4",
                        "--workers",
                        "2",
                    ]
                )
            for arm in ("scratch", "injected"):
                run = kdir / arm
                sets = [
                    f"data.root={kdir / 'cache'}",
                    f"data.train_split={'+'.join(splits)}",
                    "data.batch_size=6",
                    f"trainer.max_epochs={args.epochs}",
                    "optim.lr=1e-3",
                    f"seed={args.seed}",
                ]
                if arm == "injected":
                    sets.append(f"trainer.init_from={inject / 'best.ckpt'}")
                if not (run / "ensemble.json").exists():
                    sh(
                        [
                            *cli,
                            "train",
                            str(CONFIG),
                            "--folds",
                            "2",
                            "--out",
                            str(run),
                            *[a for s in sets for a in ("--set", s)],
                        ]
                    )
                ev = run / "eval-heldout"
                if not (ev / "per_record.csv").exists():
                    sh(
                        [
                            *cli,
                            "evaluate",
                            str(run),
                            "--folds",
                            "--data",
                            str(fdir / "heldout"),
                            "--split",
                            "validation",
                            "--out",
                            str(ev),
                        ]
                    )
                results[arm][k].append(pooled(ev / "per_record.csv"))
    table = {
        "zero_shot": dice(results["zero_shot"]),
        "zero_shot_per_fold": [dice([c]) for c in results["zero_shot"]],
        **{
            arm: {
                str(k): {"pooled": dice(v), "per_fold": [dice([c]) for c in v]}
                for k, v in results[arm].items()
            }
            for arm in ("scratch", "injected")
        },
    }
    (out / "few_labels.json").write_text(json.dumps(table, indent=1) + "\n")
    lines = [
        "| real records labelled (k) | from scratch | from the injected model |",
        "|---|---|---|",
        f"| 0 (zero-shot, injected only) | – | {table['zero_shot']:.3f} |",
    ]
    lines += [
        f"| {k} | {table['scratch'][str(k)]['pooled']:.3f} | {table['injected'][str(k)]['pooled']:.3f} |"
        for k in ks
    ]
    (out / "few_labels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, [table["scratch"][str(k)]["pooled"] for k in ks], "o-", label="from scratch")
    ax.plot(
        [0, *ks],
        [table["zero_shot"], *[table["injected"][str(k)]["pooled"] for k in ks]],
        "s-",
        label="from the injected model",
    )
    ax.set_xlabel("real records labelled (k)")
    ax.set_ylabel("pooled global Dice, held-out records")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "few_labels.png", dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
