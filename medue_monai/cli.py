"""The ``medue`` command: ``protect``, ``evaluate`` and ``demo``.

A thin door into :mod:`medue_monai.pipeline`; no algorithm lives here.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .io.png import RESAMPLE_MODES
from .protectors import PROTECTORS
from .transforms.defenses import DEFENSES
from .utils import MedueError, parse_fraction

__all__ = ["main", "build_parser"]

_HIDDEN_OPTIONS = {"self", "seed", "device", "progress", "kwargs"}


def _docstring_args(cls: type) -> dict[str, str]:
    """Parse the Google-style ``Args:`` section of a class docstring (following the MRO)."""
    descriptions: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.getdoc(klass) or ""
        match = re.search(r"^Args:\n(.*?)(?:^\S|\Z)", doc, flags=re.S | re.M)
        if not match:
            continue
        current = None
        for line in match.group(1).splitlines():
            item = re.match(r"^\s{4}(\w+):\s*(.*)$", line)
            if item:
                current = item.group(1)
                descriptions[current] = item.group(2).strip()
            elif current and line.strip():
                descriptions[current] += " " + line.strip()
    return descriptions


def method_options(cls: type) -> dict[str, inspect.Parameter]:
    """Constructor options of a protector class, including those its parent takes via ``**kwargs``."""
    options: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters
        for name, parameter in parameters.items():
            if name not in _HIDDEN_OPTIONS and parameter.kind not in (
                parameter.VAR_KEYWORD,
                parameter.VAR_POSITIONAL,
            ):
                options.setdefault(name, parameter)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break
    return options


def _format_default(value: Any) -> str:
    if isinstance(value, float):
        for denominator in (255,):
            numerator = value * denominator
            if abs(numerator - round(numerator)) < 1e-9 and 0 < value < 1:
                return f"{round(numerator)}/{denominator}"
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def methods_help() -> str:
    """Text listing every registered method with its options and defaults."""
    lines = ["methods and their options (set any with --option NAME=VALUE):"]
    for name in sorted(PROTECTORS):
        cls = PROTECTORS[name]
        summary = (inspect.getdoc(cls) or "").splitlines()[0] if inspect.getdoc(cls) else ""
        lines.append(f"\n  {name} [{cls.task}]: {summary}")
        descriptions = _docstring_args(cls)
        for option, parameter in method_options(cls).items():
            default = "" if parameter.default is inspect.Parameter.empty else _format_default(parameter.default)
            text = descriptions.get(option, "")
            lines.append(f"      {option} (default {default}): {text}")
    return "\n".join(lines)


def _cast(value: str, default: Any) -> Any:
    """Cast a ``--option`` value using the option's default as a type hint."""
    lowered = value.strip().lower()
    if isinstance(default, bool) or lowered in ("true", "false"):
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise MedueError(f"expected true/false, got {value!r}")
        return lowered in ("true", "1", "yes")
    if lowered in ("none", "null"):
        return None
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            return int(value)
        except ValueError as err:
            raise MedueError(f"expected an integer, got {value!r}") from err
    if isinstance(default, float) or default is None:
        try:
            return parse_fraction(value)
        except MedueError:
            if isinstance(default, float):
                raise
    return value


def collect_options(args: argparse.Namespace) -> dict[str, Any]:
    """Turn the method flags and ``--option`` pairs into protector constructor options.

    Raises:
        MedueError: for an option the method does not take, or a value out of range.
    """
    cls = PROTECTORS.get(args.method)
    if cls is None:
        raise MedueError(f"unknown method {args.method!r}; choose from {', '.join(sorted(PROTECTORS))}")
    known = method_options(cls)
    options: dict[str, Any] = {}
    if args.eps is not None:
        eps = parse_fraction(args.eps)
        if not 0.0 < eps <= 1.0:
            raise MedueError(f"--eps must be in (0, 1] (image units, e.g. 8/255), got {args.eps}")
        options["eps"] = eps
    if args.k is not None:
        if not 0.0 < args.k <= 100.0:
            raise MedueError(f"--k must be a percentage in (0, 100], got {args.k}")
        options["k"] = args.k
    if args.epochs is not None:
        options["epochs"] = args.epochs
    for pair in args.option or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise MedueError(f"--option expects NAME=VALUE, got {pair!r}")
        name = name.strip().replace("-", "_")
        if name not in known:
            raise MedueError(f"method {args.method!r} has no option {name!r}; see `medue protect --help`")
        default = known[name].default
        options[name] = _cast(value, None if default is inspect.Parameter.empty else default)
    for name in options:
        if name not in known:
            raise MedueError(f"method {args.method!r} has no option {name!r}; see `medue protect --help`")
    return options


def _integers(text: str | None, count: int | None, flag: str) -> tuple[int, ...] | None:
    """``"48,64,48"`` -> ``(48, 64, 48)`` (``count`` values when given); ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise MedueError(f"{flag} expects comma-separated integers, got {text!r}") from err
    if count is not None and len(values) != count:
        raise MedueError(f"{flag} expects {count} integers, got {text!r}")
    return values


def cmd_protect(args: argparse.Namespace) -> int:
    options = collect_options(args)
    common = dict(
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
        limit=args.limit,
        data_root=args.data_root,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        protector_out=args.protector_out,
        resume=args.resume,
        include_test=args.include_test,
    )
    from .pipeline import is_segmentation_spec, protect

    if is_segmentation_spec(args.data):
        from .data.volumes import is_volume_spec

        if is_volume_spec(args.data):
            common.update(
                intensity=args.intensity,
                eps_native=parse_fraction(args.eps_native) if args.eps_native is not None else None,
                volume_size=_integers(args.volume_size, 3, "--volume-size"),
                roi_classes=_integers(args.roi_classes, None, "--roi-classes"),
            )
        else:
            for flag in ("intensity", "eps_native", "volume_size", "roi_classes"):
                if getattr(args, flag) is not None:
                    raise MedueError(f"--{flag.replace('_', '-')} applies to NIfTI volumes, not to {args.data}")
            common.update(spatial_size=args.spatial_size, resample=args.resample)
    elif not Path(args.data).exists() and not args.data.startswith(("medmnist:", "synthetic")):
        raise MedueError(f"{args.data}: no such file or folder")
    manifest = protect(args.data, args.out, args.method, options, **common)
    from .io import protector_path
    from .pipeline.release import held_out_sentence

    budget = manifest.get("budget", {})
    realized = budget.get("realized", {})
    counts = ", ".join(f"{n} {split}" for split, n in manifest["counts"].items() if not split.startswith("empty"))
    print(
        f"release -> {args.out}: {counts} images, every one protected with {manifest['method']} "
        f"(training images: max|delta| {realized.get('linf_max', float('nan')):.5f}, pixels touched "
        f"{100 * realized.get('l0_share', float('nan')):.2f}%)\n"
        f"{held_out_sentence(manifest['held_out'])}\n"
        f"fitted protector -> {protector_path(args.out, args.protector_out)} (keep it private: it removes the "
        "protection; evaluate needs it)"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    common = dict(
        epochs=args.epochs,
        output=args.output,
        device=args.device,
        seed=args.seed,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        data_root=args.data_root,
        defense=args.defense,
        augmentation=args.augmentation,
        adversarial_eps=parse_fraction(args.adversarial_eps) if args.adversarial_eps is not None else None,
        protector=args.protector,
    )
    from .pipeline import evaluate, summary_line

    results = evaluate(args.protected, args.recipe, args.exploiter, **common)
    print(summary_line(results))
    if args.output is None:
        print(json.dumps({k: results[k] for k in ("clean", "protected", "invisibility", "budget")}, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, device=args.device, seed=args.seed, progress=not args.no_progress, parts=args.part)
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help text that keeps descriptions as written and appends each option's default once.

    An option whose help already says ``(default ...)`` keeps its own wording; one whose default is
    ``None`` must say in its help what happens without it.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``medue`` (every option shows its default in ``--help``)."""
    formatter = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="medue",
        description="Make medical image datasets unlearnable (SALM, UMed and baselines) and measure it.",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"medue-monai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=0, help="random seed (recorded in the manifest/results)")
        p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")
        p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
        p.add_argument(
            "--data-root", default=None, help="folder holding MedMNIST npz files (default: $MEDUE_DATA_ROOT)"
        )
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    protect = sub.add_parser(
        "protect",
        help="fit a protector on a dataset's training split and write the protected copy",
        description="Fit a protector on the training split and write the protected dataset (same format, dtype "
        "and bit depth; every image in it protected; the held-out test images left out unless --include-test) "
        "with manifest.json into --out: that folder is what you release. The fitted protector is written OUTSIDE "
        "it (--protector-out): keep it private, whoever holds it can remove the protection.",
        formatter_class=formatter,
        epilog=methods_help(),
    )
    protect.add_argument("--method", required=True, help=f"protection method: {', '.join(sorted(PROTECTORS))}")
    protect.add_argument(
        "--data",
        required=True,
        help="medmnist:<name> (looked up under --data-root), a MedMNIST .npz path, synthetic[:k=v,...], or a "
        "segmentation folder with images/ and masks/ (or a MONAI datalist .json)",
    )
    protect.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    protect.add_argument("--eps", default=None, help="L-inf budget in [0,1] units, e.g. 8/255 (default: the method's)")
    protect.add_argument(
        "--k",
        type=float,
        default=None,
        help="SALM/EM: percent of pixel positions allowed to change (default: the method's, SALM 10)",
    )
    protect.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="passes of the method's training loop (default: the method's)",
    )
    protect.add_argument("--batch-size", type=int, default=None, help="batch size (default: the method's, else 64)")
    protect.add_argument(
        "--limit",
        type=int,
        default=None,
        help="protect only the first N training items (quick trials; the held-out test split stays the same) "
        "(default: all)",
    )
    protect.add_argument(
        "--spatial-size",
        type=int,
        default=224,
        help="segmentation: working size (128 for quick runs) (default: 224)",
    )
    protect.add_argument(
        "--resample",
        choices=RESAMPLE_MODES,
        default="bilinear",
        help="segmentation: how the perturbation, made at --spatial-size, is brought to each image's original "
        "size. bilinear: plain interpolation (shrinking the release back to the working size, as anyone "
        "training on it does, averages part of it away); inverse: so that such shrinking gives back the "
        "perturbation the protector made (more of it reaches the trainer, lower PSNR)",
    )
    protect.add_argument(
        "--eps-native",
        default=None,
        help="NIfTI volumes: the L-inf budget in the volumes' native units, e.g. 8 (HU) or 20 (MR units); the written "
        "change never exceeds it (default: --eps times each volume's intensity range)",
    )
    protect.add_argument(
        "--intensity",
        default=None,
        help="NIfTI volumes: how native values map to [0,1]: percentile:LO,HI per volume (MR), window:LO,HI "
        "(CT in HU, e.g. window:-1000,1000) or dtype (default: percentile:0.5,99.5)",
    )
    protect.add_argument(
        "--volume-size",
        default=None,
        help="NIfTI volumes: working size X,Y,Z; volumes are zero-padded to it, never resampled (default: their "
        "largest extent rounded up to a multiple of 16)",
    )
    protect.add_argument(
        "--roi-classes",
        default=None,
        help="NIfTI volumes: label values that form the region of interest, e.g. 1,2 (default: every value above 0)",
    )
    protect.add_argument(
        "--option",
        action="append",
        metavar="NAME=VALUE",
        help="any other method option (repeatable), see below (default: the method's defaults)",
    )
    protect.add_argument(
        "--protector-out",
        default=None,
        help="where the fitted protector goes, outside --out; reload it with load_protector or SALMProtectd "
        "(default: <out>.protector.pt)",
    )
    protect.add_argument(
        "--include-test",
        action="store_true",
        help="also protect the held-out test images (MedMNIST's test split; 20%% of a folder) as unseen images "
        "and put them into the release; without it they stay out so that evaluate can measure the protection on "
        "their clean originals",
    )
    protect.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output folder and protector file, and discard an interrupted fit",
    )
    protect.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted fit from <protector-out>.resume (salm, em, em-seg and umed save it after every "
        "epoch; it is deleted once the output is written); the same command line must be given again",
    )
    add_common(protect)

    evaluate = sub.add_parser(
        "evaluate",
        help="train exploiters on the protected copy (read back from disk) and on the clean copy",
        formatter_class=formatter,
    )
    evaluate.add_argument("--protected", required=True, help="folder written by `medue protect`")
    evaluate.add_argument(
        "--protector",
        default=None,
        help="the release's private protector file, which records the clean source and the held-out images "
        "(default: <protected>.protector.pt)",
    )
    evaluate.add_argument(
        "--recipe",
        default=None,
        help="cls-quick, cls-paper, seg-quick or seg-paper (default: cls-quick / seg-quick by task)",
    )
    evaluate.add_argument(
        "--exploiter",
        default=None,
        help="resnet18, resnet50, vgg11, densenet121 | unet, unet-batchnorm, attentionunet, basicunetplusplus, "
        "swinunetr (default: the recipe's)",
    )
    evaluate.add_argument(
        "--epochs", type=int, default=None, help="override the recipe's epochs (default: the recipe's)"
    )
    evaluate.add_argument(
        "--defense",
        choices=list(DEFENSES),
        default="none",
        help="exploiter-side counter-measure applied to the training images of both runs (protected and clean; "
        "the test split stays clean): 3x3 mean / median / Gaussian filter, JPEG at quality 60 / 30 / 10, 2 bits "
        "per channel, center crop removing 20%% of each side, or image shortcut squeezing (grayscale, JPEG quality 10)",
    )
    evaluate.add_argument(
        "--augmentation",
        choices=["none", "crop-flip"],
        default=None,
        help="training-time augmentation of both runs: crop-flip = random crop after 4-pixel zero padding plus a "
        "random left-right flip, masks included (default: the recipe's, none)",
    )
    evaluate.add_argument(
        "--adversarial-eps",
        default=None,
        help="adversarial training of both runs: every training batch is replaced by PGD examples in this L-inf "
        "radius (10 steps of 1/255), e.g. 4/255 or 8/255; about 11x the training time; 0 turns it off "
        "(default: the recipe's, 0)",
    )
    evaluate.add_argument(
        "--output",
        default=None,
        help="results JSON path; a learning-curve PNG is written beside it (default: none, the results are printed)",
    )
    add_common(evaluate)

    demo = sub.add_parser(
        "demo",
        help="protect and evaluate a built-in synthetic dataset end to end (no download)",
        formatter_class=formatter,
    )
    demo.add_argument("--out", default="medue-demo", help="folder for the demo's protected data and results")
    demo.add_argument(
        "--part",
        choices=["all", "classification", "segmentation"],
        default="all",
        help="which demo parts to run",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``medue``: user errors print one line and exit 2, without a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"protect": cmd_protect, "evaluate": cmd_evaluate, "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except MedueError as err:
        print(f"medue {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # no space left, permission denied, ...: the file and the reason, on one line
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"medue {args.command}: error: {where}{err.strerror or err}; no partial output was kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"medue {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
