"""Peak memory of ``medue protect`` on a large classification set: the release is streamed, not held in RAM.

Writes a synthetic MedMNIST-style npz of ``--images`` random 64x64 uint8 images (10 classes) into ``--work``,
runs ``medue protect --method lsp`` on it in a child process and records the child's peak resident set size
(``ru_maxrss``), its wall time, the command, machine and date in ``benchmarks/results/<name>.json``::

    python benchmarks/stream_memory.py --images 60000 --work /tmp/bench/stream --name stream_memory_lsp_cpu
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medue_monai.utils import machine_record


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60000, help="training images (default: 60000)")
    parser.add_argument("--side", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--method", default="lsp", help="protection method (default: lsp)")
    parser.add_argument("--work", required=True, help="folder for the synthetic set and the release")
    parser.add_argument("--name", default="stream_memory_lsp_cpu", help="result file stem (default: %(default)s)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="results folder")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "large.npz"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.side, args.side), dtype=np.uint8)
    labels = (np.arange(args.images) % 10).astype(np.uint8)[:, None]
    np.savez(
        data,
        train_images=images,
        train_labels=labels,
        val_images=images[:500],
        val_labels=labels[:500],
        test_images=images[:1000],
        test_labels=labels[:1000],
    )
    source_mib = images.nbytes / 2**20
    del images
    command = [
        sys.executable,
        "-m",
        "medue_monai.cli",
        "protect",
        "--method",
        args.method,
        "--data",
        str(data),
        "--out",
        str(work / "release"),
        "--overwrite",
        "--device",
        "cpu",
        "--no-progress",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    record = {
        "benchmark": "stream_memory",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "child_command": " ".join(shlex.quote(a) for a in command),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_record("cpu"),
        "images": args.images,
        "side": args.side,
        "method": args.method,
        "train_images_mib": source_mib,
        "peak_rss_mib": peak_mib,
        "wall_seconds": wall,
        "target_peak_rss_mib": 1.2 * 1024,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{args.method} on {args.images} {args.side}x{args.side} images: peak RSS {peak_mib:.0f} MiB "
        f"(train images {source_mib:.0f} MiB; target <= 1229 MiB), {wall:.1f} s"
    )
    return record


if __name__ == "__main__":
    main()
