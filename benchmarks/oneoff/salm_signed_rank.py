"""One-off check (session 10): ``benchmarks/baselines.py`` with SALM's top-K mask ranked on the signed gradient.

Kept as run on 2026-11-23 (then at /tmp/bench/salm_signed.py; reformatted only). It replaced
``SALMProtector._sign_step`` by a copy whose mask ranks ``gradient`` instead of ``gradient.abs()``, which is
what ``--option salm.rank=signed`` does since commit fa585ea, and then ran ``baselines.py`` with the given
arguments. The manifests of those copies therefore do not list ``rank``. Results:
``results/salm_signed_check*.json``; benchmarks/README.md has the commands and numbers.
"""

import sys
from pathlib import Path

import torch

from medue_monai.protectors.salm import SALMProtector, project_l0, project_linf, topk_position_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import baselines  # noqa: E402


def _sign_step(self, rows, gradient, images):
    mask = topk_position_mask(gradient, self.k)
    rows = rows - self.step_size * torch.sign(mask * gradient)
    rows = project_linf(rows, images, self.eps) if images is not None else rows.clamp(-self.eps, self.eps)
    if self._l0_each_step:
        rows = project_l0(rows, self._projection_k, tie_break=gradient)
    return rows


SALMProtector._sign_step = _sign_step
baselines.main(sys.argv[1:])
