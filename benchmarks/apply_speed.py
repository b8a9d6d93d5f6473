"""Apply speed of a fitted protector: images per second through its MONAI transform.

Two measurements on items of a segmentation folder (read and resized once, before timing):

- ``batched``: ``UMedProtect`` / ``Protect`` on batches of ``--batch-size`` (one forward pass per batch),
- ``per_item``: ``UMedProtectd`` / ``Protectd`` inside a MONAI ``Compose``, one dictionary item at a time
  (what a user's pipeline does).

Example::

    python benchmarks/apply_speed.py --protector runs/kvasir.protector.pt \
        --data ../shared/data/kvasir-seg --spatial-size 128 --limit 160 \
        --out benchmarks/results/apply_speed_cpu.json

Writes the command, machine, date and both rates into ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from monai.transforms import Compose

from medue_monai.data.segmentation import SegmentationDataset, load_segmentation_source
from medue_monai.protectors import load_protector
from medue_monai.transforms import Protect, Protectd
from medue_monai.utils import machine_record


def _rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def main(argv: list[str] | None = None) -> int:
    """Measure and write the apply speed; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protector", required=True, help="fitted protector file (<out>.protector.pt)")
    parser.add_argument("--data", required=True, help="segmentation folder (images/ + masks/) or datalist")
    parser.add_argument("--spatial-size", type=int, default=128, help="working size (default: 128)")
    parser.add_argument("--limit", type=int, default=160, help="items to time (default: 160)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch of the batched run (default: 16)")
    parser.add_argument("--device", default="cpu", help="device (default: cpu)")
    parser.add_argument("--out", required=True, help="results JSON")
    args = parser.parse_args(argv)

    protector = load_protector(args.protector, device=args.device)
    source = load_segmentation_source(args.data, limit=args.limit)
    dataset = SegmentationDataset(source.records, args.spatial_size, source.in_channels)
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([item["image"].as_tensor() for item in items])
    labels = torch.stack([item["label"].as_tensor() for item in items])

    transform = Protect(protector)
    transform(images[: args.batch_size], labels[: args.batch_size])  # warm-up
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(items), args.batch_size):
            transform(images[start : start + args.batch_size], labels[start : start + args.batch_size])
    batched = time.perf_counter() - started

    pipeline = Compose([Protectd("image", protector, label_key="label", index_key=None)])
    pipeline(items[0])
    started = time.perf_counter()
    with torch.inference_mode():
        for item in items:
            pipeline(item)
    per_item = time.perf_counter() - started

    record = {
        "benchmark": "apply_speed",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_record(args.device),
        "method": protector.name,
        "items": len(items),
        "spatial_size": args.spatial_size,
        "batch_size": args.batch_size,
        "batched_images_per_second": _rate(len(items), batched),
        "per_item_images_per_second": _rate(len(items), per_item),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{protector.name}: {record['batched_images_per_second']:.1f} img/s batched ({args.batch_size}), "
        f"{record['per_item_images_per_second']:.1f} img/s one item at a time, {len(items)} items "
        f"at {args.spatial_size}x{args.spatial_size}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
