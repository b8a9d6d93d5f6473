"""Writers for the released dataset, manifests and atomic output folders."""

from .atomic import atomic_output_dir, atomic_output_file, check_output_dir, check_output_file, protector_path
from .manifest import MANIFEST_NAME, build_manifest, protector_record, read_manifest, write_manifest
from .npz import quantize_protected, write_npz

__all__ = [
    "MANIFEST_NAME",
    "atomic_output_dir",
    "atomic_output_file",
    "build_manifest",
    "check_output_dir",
    "check_output_file",
    "protector_path",
    "protector_record",
    "quantize_protected",
    "read_manifest",
    "write_manifest",
    "write_npz",
]
