"""Protection speed on this machine: wall time, images/s and peak memory of `medue protect` runs.

Each configuration runs in its own process (so peak RSS is its own), e.g.::

    python benchmarks/protect_speed.py --data ../shared/data/medmnist/breastmnist.npz \
        --config salm: --config em: --config "salm-1epoch:salm:epochs=1" \
        --out benchmarks/results/protect_speed_cpu.json

A config is ``NAME:METHOD[:OPT=VAL,...]`` (options as for ``--option``). Segmentation folders take
``--spatial-size``, e.g. UMed's per-epoch cost on Kvasir-SEG at 128x128::

    python benchmarks/protect_speed.py --data ../shared/data/kvasir-seg --spatial-size 128 \
        --config "umed-2-epochs:umed:epochs=2" --out benchmarks/results/protect_speed_umed_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medue_monai.utils import machine_record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data spec for medue protect")
    parser.add_argument("--config", action="append", required=True, help="NAME:METHOD[:OPT=VAL,...] (repeatable)")
    parser.add_argument("--device", default="cpu", help="device (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument(
        "--spatial-size", type=int, default=None, help="working size for segmentation data (default: the CLI's)"
    )
    parser.add_argument("--out", required=True, help="results JSON (appended to when it exists)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"runs": []}
    for config in args.config:
        name, method, *rest = config.split(":")
        options = [o for o in (rest[0].split(",") if rest and rest[0] else []) if o]
        with tempfile.TemporaryDirectory() as scratch:
            command = [
                sys.executable,
                "-m",
                "medue_monai.cli",
                "protect",
                "--method",
                method,
                "--data",
                args.data,
                "--out",
                str(Path(scratch) / "out"),
                "--device",
                args.device,
                "--seed",
                str(args.seed),
                "--no-progress",
            ]
            if args.spatial_size is not None:
                command += ["--spatial-size", str(args.spatial_size)]
            for option in options:
                command += ["--option", option]
            started = time.perf_counter()
            subprocess.run(command, check=True)
            wall = time.perf_counter() - started
            manifest = json.loads((Path(scratch) / "out" / "manifest.json").read_text())
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        run = {
            "name": name,
            "command": " ".join(shlex.quote(c) for c in command[1:]).replace(scratch, "<tmp>"),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_record(args.device),
            "seed": args.seed,
            "spatial_size": args.spatial_size,
            "wall_seconds": wall,
            "fit_seconds": manifest["timing"]["fit_seconds"],
            "train_images": manifest["counts"]["train"],
            "images_per_second_end_to_end": manifest["counts"]["train"] / wall,
            "peak_rss_mb_max_over_children": peak_rss_mb,
            "options": manifest["options"],
            "budget": manifest["budget"],
            "history_last": manifest.get("history", [])[-1:] or None,
        }
        record["runs"].append(run)
        print(
            f"{name}: {wall:.1f} s wall, {run['images_per_second_end_to_end']:.2f} img/s, "
            f"fit {run['fit_seconds']:.1f} s",
            flush=True,
        )
        out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
