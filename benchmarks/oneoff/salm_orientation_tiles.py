"""One-off check (session 25): ``benchmarks/baselines.py`` with SALM's tiles striped by class.

SALM's default code is the sign of flat 4x4 offsets at places the noise picks: to read it, a network that
pools globally has to tell where a small offset sits on unknown anatomy. This check gives each class its own
tile texture instead: two-pixel-wide bars, vertical for class 0 and horizontal for class 1 (for more classes,
the diagonals and one-pixel bars follow). A convolution reads a texture's orientation wherever it sits, so the
code no longer depends on places, and bars two pixels wide keep about half their amplitude through a 3x3
Gaussian filter (a one-pixel checkerboard keeps 1 %).

It replaces ``SALMProtector._sign_step`` by a copy whose tile field depends on each row's label (the labels of
the minibatch are stashed by a wrapped ``noise_step``), then runs ``baselines.py`` with the given arguments and
``--option salm.block=4`` (the default). The manifests of those copies record ``pattern="flat"``, the option
the patch overrides. Results and commands: ``benchmarks/README.md``, section "SALM with tiles striped by class".
"""

import sys
from pathlib import Path

import torch

from medue_monai.protectors.budget import block_average, project_l0, project_linf, tile_side, topk_position_mask
from medue_monai.protectors.salm import SALMProtector

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import baselines  # noqa: E402


def class_fields(height: int, width: int, device: torch.device) -> torch.Tensor:
    """``(8, 1, H, W)`` +-1 fields: bars two pixels wide (vertical, horizontal, two diagonals), then one pixel."""
    rows = torch.arange(height, device=device).reshape(-1, 1).expand(height, width)
    cols = torch.arange(width, device=device).reshape(1, -1).expand(height, width)
    fields = []
    for period in (4, 2):
        for coordinate in (cols, rows, rows + cols, rows - cols + width):
            fields.append(1.0 - 2.0 * ((coordinate % period) >= period // 2).float())
    return torch.stack(fields).unsqueeze(1)


def _sign_step(self, rows, gradient, images):
    height, width = gradient.shape[-2:]
    labels = self._step_labels
    field = class_fields(height, width, gradient.device)[labels % 8]
    tile_gradient = block_average(gradient * field, tile_side(height * width, self.k, self.block))
    mask = topk_position_mask(tile_gradient.abs(), self.k, self.block)
    rows = rows - self.step_size * torch.sign(mask * tile_gradient) * field
    rows = project_linf(rows, images, self.eps) if images is not None else rows.clamp(-self.eps, self.eps)
    if self._l0_each_step:
        rows = project_l0(rows, self._projection_k, tie_break=gradient, block=self.block)
    return rows


_noise_step = SALMProtector.noise_step


def noise_step(self, images, labels, indices, steps):
    if self.classwise or self.mix_images:
        raise SystemExit("salm_orientation_tiles.py: sample-wise SALM without mix_images only")
    self._step_labels = labels
    return _noise_step(self, images, labels, indices, steps)


SALMProtector._sign_step = _sign_step
SALMProtector.noise_step = noise_step
baselines.main(sys.argv[1:])
