"""One protect run, the same for the CLI, the bundles and the MONAI Label app: source, split, protector, fit,
private protector file and release.

:class:`ProtectionRun` builds what a run needs from a data spec (the seeded split, the training dataset and
loader, the protector) and records its settings in the private record, so that a release written later from
the saved protector (:func:`release_from_protector`, the bundles' ``inference.json``) is the one ``medue
protect`` writes in one go (:func:`protect`).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_output_dir, atomic_output_file, check_output_dir, check_output_file, protector_path
from ..io.manifest import private_record, read_private_record
from ..protectors import get_protector_class, load_protector
from ..protectors.base import Protector
from ..utils import MedueError, resolve_device, set_seed
from .release import held_out_entry
from .resume import attach_fit_checkpoint

__all__ = ["ProtectionRun", "is_segmentation_spec", "protect", "release_from_protector", "run_from_protector"]


def is_segmentation_spec(spec: str | Path) -> bool:
    """A segmentation source: a folder (images/ + masks/) or a datalist ``.json``; else a classification spec."""
    path = Path(spec)
    return path.is_dir() or str(spec).endswith(".json")


class ProtectionRun:
    """The data side and the protector of one protect run.

    Args:
        data: ``medmnist:<name>``, an npz path or ``synthetic[:...]`` (classification); a folder with ``images/``
            and ``masks/`` or a MONAI datalist ``.json`` (segmentation).
        method: a registered method name.
        options: the method's options (default: its defaults).
        seed: seed of the split, the loader's shuffling and the protector (default 0).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"`` (default ``"auto"``).
        limit: use only the first ``limit`` training items (default: all).
        data_root: where MedMNIST files are looked up / a datalist's relative paths start (default: none).
        batch_size: loader batch size (default: the method's ``batch_size``, else 64 / 16).
        num_workers: DataLoader workers (default 0).
        progress: show progress bars (default ``True``).
        spatial_size: segmentation working side (default 224).
        include_test: also protect the held-out test images and put them into the release (default ``False``).
        resample: segmentation: how the perturbation reaches the original size (default ``"bilinear"``).
        distributed: shard the training data over the processes of a running process group
            (:class:`~medue_monai.protectors.distributed.FixedShardSampler`: the same shard every epoch, padded to
            equal length) (default ``False``).
        protector: an already fitted protector to write a release with (default: build one from ``method``).
        intensity: volumes: how native values map to [0, 1], ``percentile:LO,HI`` (per volume; default
            ``percentile:0.5,99.5``), ``window:LO,HI`` (e.g. ``window:-1000,1000`` for CT in HU) or ``dtype``.
        eps_native: volumes: the L-inf budget in native units (e.g. 8 HU, 20 MR units); default ``eps`` times each
            volume's intensity range.
        volume_size: volumes: the working size ``(X, Y, Z)`` (default: the largest extent of the volumes on each
            axis, rounded up to a multiple of 16; volumes are zero-padded to it, never resampled).
        roi_classes: volumes: the label values that form the region of interest (default: every value above 0).

    Raises:
        MedueError: bad data, options, or a method of the other task.
    """

    def __init__(
        self,
        data: str | Path,
        method: str,
        options: dict[str, Any] | None = None,
        *,
        seed: int = 0,
        device: str = "auto",
        limit: int | None = None,
        data_root: str | Path | None = None,
        batch_size: int | None = None,
        num_workers: int = 0,
        progress: bool = True,
        spatial_size: int = 224,
        include_test: bool = False,
        resample: str = "bilinear",
        distributed: bool = False,
        protector: Protector | None = None,
        intensity: str | None = None,
        eps_native: float | None = None,
        volume_size: tuple[int, int, int] | None = None,
        roi_classes: tuple[int, ...] | None = None,
    ) -> None:
        self.data, self.method, self.options = str(data), method, dict(options or {})
        self.seed, self.limit, self.data_root = int(seed), limit, data_root
        self.num_workers, self.progress = int(num_workers), bool(progress)
        self.spatial_size, self.include_test, self.resample = int(spatial_size), bool(include_test), resample
        self.eps_native = None if eps_native is None else float(eps_native)
        self.volume_size = tuple(int(v) for v in volume_size) if volume_size else None
        self.roi_classes = tuple(int(c) for c in roi_classes) if roi_classes else None
        self.volumes = False
        if self.eps_native is not None and not self.eps_native > 0:
            raise MedueError(f"eps_native must be > 0, got {eps_native}")
        self.task = "segmentation" if is_segmentation_spec(self.data) else "classification"
        cls = get_protector_class(method)
        if cls.task != self.task:
            raise MedueError(f"method {method!r} is for {cls.task}; {self.data!r} is a {self.task} dataset")
        if self.task == "segmentation":
            from ..io.png import RESAMPLE_MODES

            if resample not in RESAMPLE_MODES:
                raise MedueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        self._intensity = intensity
        generator = set_seed(self.seed)
        if self.task == "classification":
            self._classification_source()
        else:
            self._segmentation_source()
        if protector is None:
            try:
                protector = cls(
                    **{"progress": progress, **self.options, "seed": self.seed, "device": resolve_device(device)}
                )
            except TypeError as err:
                raise MedueError(f"method {method!r}: {err}") from err
        self.protector = protector
        self.batch_size = int(
            batch_size or getattr(protector, "batch_size", 64 if self.task == "classification" else 16)
        )
        self.loader = self._loader(generator, distributed)
        self.checkpoint = None
        self.fit_seconds = 0.0

    # ------------------------------------------------------------------ building
    def _classification_source(self) -> None:
        from ..data import load_classification_spec

        self.source = load_classification_spec(self.data, data_root=self.data_root, limit=self.limit)
        self.source_path = self.source.path
        self.train_dataset = self.source.dataset("train")
        self.num_classes = self.source.num_classes
        self.split = None
        self.held_out = held_out_entry("test", len(self.source.images("test")), self.include_test)

    def _segmentation_source(self) -> None:
        from ..data.segmentation import SegmentationDataset, load_segmentation_source, split_ids
        from ..data.volumes import VolumeDataset, is_volume_spec, load_volume_source, parse_intensity, working_size_for

        if self.limit is not None and int(self.limit) < 1:
            raise MedueError(f"limit must be >= 1, got {self.limit}")
        self.volumes = is_volume_spec(self.data)
        if self.volumes:
            self.source = load_volume_source(self.data, data_root=self.data_root)
            self.intensity = parse_intensity(self._intensity)
            self.working_size = self.volume_size or working_size_for(self.source.max_shape)
        else:
            if self.eps_native is not None or self._intensity is not None:
                raise MedueError("eps_native and intensity apply to volumes (NIfTI); 2-D images use --eps")
            self.source = load_segmentation_source(self.data, data_root=self.data_root)
        self.source_path = self.source.path
        split = split_ids(self.source.ids, seed=self.seed)
        if self.limit is not None:
            split["train"] = split["train"][: int(self.limit)]
        self.split = split
        self.train_records = self.source.subset(split["train"])
        self.test_records = self.source.subset(split["test"])
        if self.volumes:
            self.train_dataset = VolumeDataset(self.train_records, self.working_size, self.intensity, self.roi_classes)
        else:
            self.train_dataset = SegmentationDataset(self.train_records, self.spatial_size, self.source.in_channels)
        self.num_classes = 2
        self.held_out = held_out_entry("test", len(self.test_records), self.include_test)

    def _loader(self, generator: Any, distributed: bool) -> Any:
        sampler = None
        if distributed:
            from ..protectors.distributed import FixedShardSampler

            sampler = FixedShardSampler(self.train_dataset, shuffle=True, seed=self.seed)
        if self.task == "classification":
            from monai.data import DataLoader
        else:
            from torch.utils.data import DataLoader
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=self.num_workers,
        )

    @property
    def num_samples(self) -> int:
        """Number of training items."""
        return len(self.train_dataset)

    @property
    def settings(self) -> dict[str, Any]:
        """What defines the run besides the method's options (recorded privately; a later release rebuilds it)."""
        return {
            "data": self.data,
            "method": self.method,
            "seed": self.seed,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "spatial_size": self.spatial_size if self.task == "segmentation" else None,
            "include_test": self.include_test,
            "resample": self.resample if self.task == "segmentation" else None,
            "intensity": self.intensity.describe() if self.volumes else None,
            "eps_native": self.eps_native,
            "volume_size": list(self.working_size) if self.volumes else None,
            "roi_classes": list(self.roi_classes) if self.roi_classes else None,
        }

    def record(self, release: str | Path | None = None) -> dict[str, Any]:
        """The private record of this run (:func:`medue_monai.io.manifest.private_record`) with its settings and
        fit timing."""
        record = private_record(
            spec=self.data,
            source=self.source_path,
            data_root=self.data_root,
            release=release,
            held_out=self.held_out,
            split=self.split,
        )
        record["settings"] = self.settings
        record["fit"] = {
            "seconds": self.fit_seconds,
            "seconds_before_resume": self.checkpoint.earlier_seconds if self.checkpoint is not None else 0.0,
            "device": str(self.protector.device),
        }
        return record

    # ------------------------------------------------------------------ work
    def attach_checkpoint(self, protector_file: str | Path, resume: bool, overwrite: bool) -> None:
        """Make the fit resumable through ``<protector_file>.resume`` (see :func:`attach_fit_checkpoint`)."""
        run = {k: v for k, v in self.settings.items() if k in ("data", "seed", "limit", "batch_size", "spatial_size")}
        self.checkpoint = attach_fit_checkpoint(
            self.protector, Path(protector_file), self.source_path, run, resume, overwrite
        )

    def fit(self) -> Protector:
        """Fit the protector on the training loader; returns it."""
        kwargs = {}
        if self.task == "classification" and "val_loader" in inspect.signature(self.protector.fit).parameters:
            from monai.data import DataLoader

            # SEP/TAP score their checkpoints on MedMNIST's val split
            kwargs["val_loader"] = DataLoader(
                self.source.dataset("val"), batch_size=self.batch_size, num_workers=self.num_workers
            )
        started = time.perf_counter()
        self.protector.fit(self.loader, self.num_classes, self.num_samples, **kwargs)
        self.fit_seconds = time.perf_counter() - started
        return self.protector

    def save_protector(self, path: str | Path, overwrite: bool = False, release: str | Path | None = None) -> Path:
        """Write the fitted protector with the private record to ``path`` (atomically, mode 0600)."""
        path = check_output_file(path, overwrite=overwrite, inputs=self._inputs())
        with atomic_output_file(path, overwrite, private=True) as saved:
            self.protector.save(saved, record=self.record(release))
        return path

    def write_release(
        self, folder: str | Path, protector_file: str | Path, fit: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write the release into ``folder`` (an empty, usually temporary folder) and return its manifest.

        Args:
            folder: where the release files go.
            protector_file: the saved protector (hashed into the manifest; its path is not recorded).
            fit: the fit's timing (default this run's).
        """
        fit = fit if fit is not None else self.record()["fit"]
        if self.task == "classification":
            from .classification import write_classification_release

            return write_classification_release(self, Path(folder), protector_file, fit)
        if self.volumes:
            from .volumes import write_volume_release

            return write_volume_release(self, Path(folder), protector_file, fit)
        from .segmentation import write_segmentation_release

        return write_segmentation_release(self, Path(folder), protector_file, fit)

    def _inputs(self) -> tuple[str | Path, ...]:
        return (self.source_path,) if self.source_path else ()


def protect(
    data: str | Path,
    out: str | Path,
    method: str,
    options: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
    protector_out: str | Path | None = None,
    resume: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Fit a protector and write the release and the private protector file (what ``medue protect`` does).

    Both are written to temporary paths and renamed at the end, so a failure leaves nothing behind; the input
    is never modified.

    Args:
        data: the data spec (see :class:`ProtectionRun`).
        out: the release folder (must not exist unless ``overwrite``; never inside the input).
        method: the method name.
        options: the method's options.
        overwrite: replace an existing release and protector file, and discard an interrupted fit.
        protector_out: the fitted protector's path (default ``<out>.protector.pt``; never inside ``out``).
        resume: continue an interrupted fit from ``<protector file>.resume``.
        settings: the other arguments of :class:`ProtectionRun` (seed, device, limit, ...).

    Returns:
        The manifest written.

    Raises:
        MedueError: bad data, options or output paths.
    """
    run = ProtectionRun(data, method, options, **settings)
    out = check_output_dir(out, overwrite=overwrite, inputs=run._inputs())
    protector_file = check_output_file(protector_path(out, protector_out), overwrite=overwrite, inputs=run._inputs())
    run.attach_checkpoint(protector_file, resume, overwrite)
    run.fit()
    with (
        atomic_output_file(protector_file, overwrite, private=True) as saved,
        atomic_output_dir(out, overwrite) as folder,
    ):
        run.protector.save(saved, record=run.record(out))
        manifest = run.write_release(folder, saved)
    if run.checkpoint is not None:
        run.checkpoint.remove()
    return manifest


def run_from_protector(
    protector_file: str | Path,
    *,
    data: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    include_test: bool | None = None,
) -> tuple[ProtectionRun, dict[str, Any]]:
    """The :class:`ProtectionRun` a saved protector was fitted in, rebuilt from its private record.

    Args:
        protector_file: the fitted protector (with its private record).
        data: the data spec, when the source moved (default: the recorded one).
        data_root: where to look for the source (default: the recorded one).
        device: where the protector runs.
        num_workers: DataLoader workers.
        progress: show progress bars.
        include_test: protect the held-out test images too and put them into the release (default: as the fit
            run recorded).

    Returns:
        ``(run, record)``.

    Raises:
        MedueError: a missing or record-less protector file, or a source that cannot be found.
    """
    record = read_private_record(protector_file)
    settings = dict(record.get("settings") or {})
    if not settings:
        raise MedueError(f"{protector_file}: the private record holds no run settings (written by an older version?)")
    protector = load_protector(protector_file, device=device)
    root = data_root if data_root is not None else record.get("data_root")
    spec = data if data is not None else (record.get("source") or settings["data"])
    run = ProtectionRun(
        spec,
        settings["method"],
        protector.config(),
        seed=settings["seed"],
        device=device,
        limit=settings["limit"],
        data_root=root,
        batch_size=settings["batch_size"],
        num_workers=num_workers,
        progress=progress,
        spatial_size=settings["spatial_size"] or 224,
        include_test=settings["include_test"] if include_test is None else include_test,
        resample=settings["resample"] or "bilinear",
        protector=protector,
        intensity=settings.get("intensity"),
        eps_native=settings.get("eps_native"),
        volume_size=settings.get("volume_size"),
        roi_classes=settings.get("roi_classes"),
    )
    run.data = settings["data"]  # the spec as first given: the manifest shows what the CLI run shows
    run.fit_seconds = float(record.get("fit", {}).get("seconds", 0.0))
    return run, record


def release_from_protector(
    protector_file: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    run: ProtectionRun | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Write the release of a saved protector: the run its private record describes, with the same writer and
    manifest as :func:`protect` (the bundles' ``inference.json``).

    Args:
        protector_file: the fitted protector (with its private record).
        out: the release folder (never the protector's own folder or inside the input).
        overwrite: replace an existing release folder.
        run: the run rebuilt already by :func:`run_from_protector` (default: rebuild it).
        kwargs: the arguments of :func:`run_from_protector` (data, data_root, device, num_workers, progress).

    Returns:
        The manifest written.

    Raises:
        MedueError: a missing or record-less protector file, a source that cannot be found, or a bad ``out``.
    """
    record = read_private_record(protector_file)
    if run is None:
        run, record = run_from_protector(protector_file, **kwargs)
    out = check_output_dir(out, overwrite=overwrite, inputs=(*run._inputs(), protector_file))
    with atomic_output_dir(out, overwrite) as folder:
        return run.write_release(folder, protector_file, fit=record.get("fit"))
