"""UMed: contour- and texture-aware unlearnable perturbations for medical image segmentation.

Sun et al., "Unlearnable Examples for Medical Image Segmentation" (the paper in ``shared/papers``).
Two generators map an image to perturbations confined by its mask ``y``:

- contour band ``y_c = dilate(y, r) - erode(y, r)`` (square structuring element, ``r`` = 3 px at
  224x224 scaled with the image side); ``delta_c = clip(F_c(x) * y_c, -eps, eps)`` where ``F_c`` is an
  encoder-decoder with central-difference convolutions in its encoder;
- ROI interior ``y_t = y * (1 - y_c)``; ``delta_t = clip(F_t(x), -eps * x_t * y_t, eps * x_t * y_t)``
  with ``F_t`` a MONAI UNet and ``x_t`` the LBP texture-strength map (:func:`texture_strength`);
- ``x_p = clip(x + delta_c + delta_t, 0, 1)``; both generators MINIMIZE the surrogate U-Net's DiceCE
  loss on ``x_p`` (error-minimizing: an easy shortcut the exploiter learns instead of the anatomy).

Training interleaves generator and surrogate steps within every minibatch by default
(``alternation="batch"``, ``generator_steps`` generator steps then one surrogate step); the paper's
Algorithm 1 alternates whole epochs (``alternation="epoch"``: epoch ``i`` trains the surrogate when
``i % cycle == 0`` and the generators otherwise, four generator epochs per surrogate epoch).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from skimage.feature import local_binary_pattern

from ..nets import get_segmenter, resolve_segmenter, segmenter_multiple
from ..nets.cdc import CDCUNet, texture_generator
from ..utils import MedueError
from .base import BilevelProtector, register_protector, surrogate_reset_seed
from .masks import contour_band, contour_radius, dilate_mask

__all__ = [
    "UMedProtector",
    "texture_strength",
]


def texture_strength(images: torch.Tensor, points: int = 8, radius: float = 1.0) -> torch.Tensor:
    """LBP texture-strength map ``x_t`` in [0, 1], ``(B, 1, *spatial)``, larger where texture is stronger.

    Exactly: (1) grey = channel mean of the image, quantized to uint8; (2) ``codes =
    skimage.feature.local_binary_pattern(grey, P=points, R=radius, method="default")``, where bit ``p``
    is 1 when neighbour ``p`` >= the centre; skimage's bilinear sampling of off-grid neighbours turns
    exact ties into tiny negative differences, so a bit is also set when the code of ``255 - grey``
    says the neighbour is NOT strictly larger there (ties count as >=, as LBP intends); (3) per pixel,
    count the circular 0/1 transitions ``T`` of the ``P``-bit code (0 on flat areas and extrema,
    2 on edges / uniform patterns, up to ``P`` on alternating micro-texture); (4) average ``T / P`` over
    the ``(2R+1)``-square neighbourhood (reflect padding); (5) divide by the image's maximum (an image
    without any transitions gets zeros). Computed with NumPy per image (no per-pixel Python loop).

    Volumes ``(B, C, X, Y, Z)``: steps (1)-(4) run on every slice along the last (slowest-varying) axis, the
    in-plane one of most acquisitions (LBP is a 2-D operator; a 3-D analogue on 26 neighbours would mix the often
    coarser through-plane spacing into the texture), and step (5) divides by the volume's maximum.

    Args:
        images: ``(B, C, H, W)`` or ``(B, C, X, Y, Z)`` float images in [0, 1].
        points: LBP sampling points ``P``.
        radius: LBP radius ``R``.

    Returns:
        The strength map on the images' device.
    """
    volumes = images.dim() == 5
    planes = images.permute(0, 4, 1, 2, 3).reshape(-1, *images.shape[1:4]) if volumes else images
    grey = (planes.detach().float().mean(dim=1).clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    bits = np.arange(points)
    maps = []
    for image in grey:
        forward = local_binary_pattern(image, P=points, R=radius, method="default").astype(np.int64)
        inverted = local_binary_pattern(255 - image, P=points, R=radius, method="default").astype(np.int64)
        pattern = ((forward[..., None] >> bits) & 1) | (1 - ((inverted[..., None] >> bits) & 1))
        transitions = (pattern != np.roll(pattern, 1, axis=-1)).sum(axis=-1) / float(points)
        maps.append(transitions)
    strength = torch.from_numpy(np.stack(maps)).float()[:, None]
    size = 2 * int(math.ceil(radius)) + 1
    strength = F.avg_pool2d(F.pad(strength, (size // 2,) * 4, mode="reflect"), size, stride=1)
    if volumes:  # back to (B, 1, X, Y, Z)
        batch, depth = images.shape[0], images.shape[4]
        strength = strength.reshape(batch, depth, 1, *strength.shape[2:]).permute(0, 2, 3, 4, 1)
    top = strength.amax(dim=tuple(range(2, strength.dim())), keepdim=True)
    strength = torch.where(top > 0, strength / top.clamp_min(1e-12), torch.zeros_like(strength))
    return strength.to(images.device)


def _tensor(value: Any) -> torch.Tensor:
    return value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)


@register_protector("umed")
class UMedProtector(BilevelProtector):
    """UMed: generators of contour- and texture-aware perturbations, trained against a surrogate U-Net.

    Defaults from the paper: ``eps=4/255``, Adam optimizers, batch 16, ``cycle=5`` (surrogate epoch when
    ``epoch % 5 == 0``, generator epochs otherwise), DiceCE loss, surrogate = U-Net, contour band radius
    3 px at 224x224, LBP texture bound, CDC contour encoder.
    Defaults chosen by us (the paper is silent, or its schedule is a GPU one): ``epochs=20`` in total
    (the paper runs 100 surrogate epochs = 500 in total at 224x224 on a GPU: pass
    ``alternation="epoch", epochs=500, lr_generator=1e-4, lr_surrogate=1e-4`` to reproduce its schedule;
    20 keeps a seg-quick fit of Kvasir-SEG near 45 minutes on 2 CPU cores),
    ``lr_generator=lr_surrogate=1e-3`` (the paper's 1e-4 suits its 500 epochs; with 30 the surrogate
    stays far from fitted), generator outputs squashed into their bounds as ``bound * tanh(raw)``
    (``output="tanh"``: smooth inside the budget, so the gradient does not die at the clip as it does
    with the paper's plain clip, ``output="linear"``), LBP with 8 points at radius 1, generator widths
    (8, 16, 32, 64) for the CDC network and (16, 32, 64, 128) for the texture UNet, surrogate MONAI
    UNet widths (16, 32, 64, 128, 256) with 2 residual units (the seg-quick exploiter's).
    ``fit`` is resumable: with a :class:`~medue_monai.protectors.base.FitCheckpoint` in :attr:`checkpoint` it
    saves networks, optimizers and RNG states after every epoch and continues from them.
    Also ours: ``alternation="batch"`` (generator and surrogate steps interleaved within every minibatch)
    with ``generator_steps=1``. With the paper's epoch alternation the generators barely lowered the
    surrogate's loss and a small Kvasir-SEG check showed no protection; interleaving per batch cut the
    exploiter's Dice from 47.99 % to 13.01 % (4 generator steps per batch) and, in a second run, from
    44.97 % to 10.26 % (1 generator step per batch, 2.5x cheaper), see ``alternation`` and
    ``benchmarks/README.md``. Full seg-quick on Kvasir-SEG with these defaults (CPU, seed 0): UNet Dice
    74.29 % clean-trained vs 9.36 % and 8.16 % UMed-trained (two exploiter runs on the same copy), PSNR
    54.23 dB, fit 1399 s on 2 cores (measured alone). The same UNet with batch norm (exploiter
    ``unet-batchnorm``) on a copy fitted again with these defaults: 70.12 % clean-trained vs 0.09 %
    UMed-trained; the UNet's remaining Dice comes from its per-image (instance) normalization.

    Args:
        eps: L-inf budget in [0, 1] units.
        epochs: total epochs of the alternation (surrogate epochs = ``ceil(epochs / cycle)``).
        batch_size: minibatch size used by callers that build the loader (CLI, bundles).
        lr_generator: Adam learning rate of both generators.
        lr_surrogate: Adam learning rate of the surrogate.
        surrogate: the surrogate segmentation network (:func:`medue_monai.nets.get_segmenter`): ``unet`` (the
            paper's U-Net; default), ``unet-batchnorm``, ``attentionunet``, ``basicunetplusplus`` or ``swinunetr``.
        cycle: epoch alternation period (``alternation="epoch"`` only): surrogate when ``epoch % cycle == 0``,
            generators otherwise.
        alternation: ``"batch"`` (default, ours: every minibatch takes ``generator_steps`` generator steps,
            then one surrogate step, as SALM's Algorithm 1 interleaves) or ``"epoch"`` (the paper's: whole
            epochs of one phase, see ``cycle``). Measured on 150 Kvasir-SEG pairs (UMed at 64x64, 20 epochs;
            seg-quick UNet at 128x128, 20 epochs, CPU): clean-trained Dice 47.99 %, ``"epoch"`` 48.60 %,
            ``"batch"`` with 4 generator steps 13.01 %; with 1 generator step (2 threads, clean 44.97 %)
            10.26 %.
        generator_steps: generator steps per minibatch in ``"batch"`` alternation (each costs about 1.8x a
            surrogate step).
        contour_radius: contour band radius in pixels at 224x224 (scaled linearly with the side).
        lbp_points: LBP sampling points.
        lbp_radius: LBP radius in pixels.
        output: ``"tanh"`` (``bound * tanh(F(x))`` per perturbation) or ``"linear"`` (raw output, clipped as
            in the paper).
        contour_only: ablation: no texture perturbation.
        texture_only: ablation: no contour perturbation.
        cdc: central-difference convolutions in the contour encoder (``False``: vanilla ablation).
        fixed_bound: ablation: texture bound ``eps * y_t`` instead of ``eps * x_t * y_t``.
        reset_every: re-initialize the surrogate U-Net and its optimizer at the start of every this many
            epochs (0 = never, the paper's schedule), from a seed derived from the epoch, so the generators
            keep meeting surrogates that learn from scratch, as an exploiter does (ours, as SALM's option
            of the same name). On Kvasir-SEG (seg-quick UNet, CPU, seed 0) ``reset_every=5`` left 11.28 %
            Dice against the defaults' 8.16 %, so it is off by default (``benchmarks/README.md``).
        clean_negatives: weight of a second surrogate loss on the CLEAN images labelled all background
            (0 = off, the paper's objective; ours). The surrogate then has to tell perturbed pixels from
            natural ones, and the generators, which minimize its loss on the perturbed images, learn
            perturbations that a network can separate from natural texture. Motivation: an exploiter
            trained on a default UMed copy predicts foreground on clean images at random places (its
            foreground probability on clean Kvasir-SEG test images is no higher inside the polyps than
            outside), and its Dice is the chance overlap of those guesses (``benchmarks/README.md``).
            Each surrogate step then runs on twice the batch. On Kvasir-SEG (seg-quick UNet, CPU, seed 0)
            ``clean_negatives=1`` left 10.97 % Dice and ``clean_negatives=4`` 12.63 %, against the defaults'
            8.16 %, so it is off by default.
        background_noise: scale ``s`` in [0, 1] of label-free noise added when the fitted protector is
            applied (:meth:`perturb`; the fit is unchanged): ``s * eps * x_t`` times an independent random
            sign per pixel and channel on every pixel outside the ROI and its contour band (0 = off, the
            paper's release; ours). The signs are drawn from a generator seeded with ``seed`` and the
            image's 8-bit content, so an image gets the same noise in any batch; an image with an empty
            mask still gets no perturbation at all. Why: an instance-normalized exploiter rescales every
            feature map per image, so on a clean image it marks whatever natural texture looks most like
            the shortcut; background texture that is random, and labelled background in every released
            image, is meant to teach it that such texture is background. On Kvasir-SEG (seg-quick UNet, CPU,
            two fixed fits, the same four exploiter runs; on the first fit the same noise came from a one-off
            script with its own random draw) ``background_noise=1`` moved the Dice from 11.12,
            8.36, 10.77, 2.62 % to 3.40, 7.88, 6.20, 6.95 % at 45.19 dB PSNR (default 54.47 dB): it lowers
            the runs that mark much, raises the one that marked little, and costs about 9 dB, so it is off
            by default (``benchmarks/README.md``, session 22).
        progress: show tqdm progress bars.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        MedueError: for options outside their ranges.
    """

    task = "segmentation"

    def __init__(
        self,
        eps: float = 4 / 255,
        epochs: int = 20,
        batch_size: int = 16,
        lr_generator: float = 1e-3,
        lr_surrogate: float = 1e-3,
        surrogate: str = "unet",
        cycle: int = 5,
        alternation: str = "batch",
        generator_steps: int = 1,
        contour_radius: float = 3.0,
        lbp_points: int = 8,
        lbp_radius: float = 1.0,
        output: str = "tanh",
        contour_only: bool = False,
        texture_only: bool = False,
        cdc: bool = True,
        fixed_bound: bool = False,
        reset_every: int = 0,
        clean_negatives: float = 0.0,
        background_noise: float = 0.0,
        progress: bool = True,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> None:
        super().__init__(eps=eps, seed=seed, device=device)
        for option, value in (
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("cycle", cycle),
            ("generator_steps", generator_steps),
            ("lbp_points", lbp_points),
        ):
            if int(value) < 1:
                raise MedueError(f"{option} must be >= 1, got {value}")
        if int(reset_every) < 0:
            raise MedueError(f"reset_every must be >= 0, got {reset_every}")
        if not float(clean_negatives) >= 0:
            raise MedueError(f"clean_negatives must be >= 0, got {clean_negatives}")
        if not 0.0 <= float(background_noise) <= 1.0:
            raise MedueError(f"background_noise must be in [0, 1], got {background_noise}")
        if alternation not in ("epoch", "batch"):
            raise MedueError(f"alternation must be 'epoch' or 'batch', got {alternation!r}")
        if output not in ("tanh", "linear"):
            raise MedueError(f"output must be 'tanh' or 'linear', got {output!r}")
        if contour_only and texture_only:
            raise MedueError("contour_only and texture_only exclude each other")
        if float(contour_radius) <= 0 or float(lbp_radius) <= 0:
            raise MedueError("contour_radius and lbp_radius must be > 0")
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr_generator = float(lr_generator)
        self.lr_surrogate = float(lr_surrogate)
        self.surrogate_name = resolve_segmenter(surrogate)
        self.cycle = int(cycle)
        self.alternation = alternation
        self.generator_steps = int(generator_steps)
        self.contour_radius = float(contour_radius)
        self.lbp_points = int(lbp_points)
        self.lbp_radius = float(lbp_radius)
        self.output = output
        self.contour_only = bool(contour_only)
        self.texture_only = bool(texture_only)
        self.cdc = bool(cdc)
        self.fixed_bound = bool(fixed_bound)
        self.reset_every = int(reset_every)
        self.clean_negatives = float(clean_negatives)
        self.background_noise = float(background_noise)
        self.progress = bool(progress)
        self.in_channels = 0
        self.spatial_dims = 2
        self.current_epoch = 0
        self._reset_epoch = -1
        self.history: list[dict[str, float]] = []
        self.contour_net: torch.nn.Module | None = None
        self.texture_net: torch.nn.Module | None = None
        self.surrogate: torch.nn.Module | None = None
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    # ------------------------------------------------------------------ config / state
    def config(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr_generator": self.lr_generator,
            "lr_surrogate": self.lr_surrogate,
            "surrogate": self.surrogate_name,
            "cycle": self.cycle,
            "alternation": self.alternation,
            "generator_steps": self.generator_steps,
            "contour_radius": self.contour_radius,
            "lbp_points": self.lbp_points,
            "lbp_radius": self.lbp_radius,
            "output": self.output,
            "contour_only": self.contour_only,
            "texture_only": self.texture_only,
            "cdc": self.cdc,
            "fixed_bound": self.fixed_bound,
            "reset_every": self.reset_every,
            "clean_negatives": self.clean_negatives,
            "background_noise": self.background_noise,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()

        return {
            "in_channels": self.in_channels,
            "spatial_dims": self.spatial_dims,
            **self._network_states(),
            "history": self.history,
        }

    def _network_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """CPU copies of the three networks' weights, keyed as in saved states."""
        return {
            name: {k: v.detach().cpu() for k, v in getattr(self, name).state_dict().items()}
            for name in ("contour_net", "texture_net", "surrogate")
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.build(int(state["in_channels"]), int(state.get("spatial_dims", 2)))
        self.contour_net.load_state_dict(state["contour_net"])
        self.texture_net.load_state_dict(state["texture_net"])
        self.surrogate.load_state_dict(state["surrogate"])
        self.history = list(state.get("history", []))
        self.finalize()

    # ------------------------------------------------------------------ networks
    def build(self, in_channels: int, spatial_dims: int = 2) -> None:
        """Create the generators, the surrogate and their Adam optimizers for ``in_channels`` and 2-D or 3-D."""
        torch.manual_seed(self.seed)
        self.in_channels = int(in_channels)
        self.spatial_dims = int(spatial_dims)
        self.contour_net = CDCUNet(in_channels, in_channels, cdc=self.cdc, spatial_dims=self.spatial_dims).to(
            self.device
        )
        self.texture_net = texture_generator(in_channels, in_channels, spatial_dims=self.spatial_dims).to(self.device)
        self._build_surrogate()
        generator_parameters = list(self.contour_net.parameters()) + list(self.texture_net.parameters())
        self.generator_optimizer = torch.optim.Adam(generator_parameters, lr=self.lr_generator)

    def _build_surrogate(self, seed: int | None = None) -> None:
        """Create the surrogate (``surrogate``; the default U-Net is the seg-quick exploiter's) and its Adam optimizer.

        Args:
            seed: seed of the initialization; ``None`` continues the current random stream.
        """
        if seed is not None:
            torch.manual_seed(seed)
        self.surrogate = get_segmenter(self.surrogate_name, self.in_channels, 2, spatial_dims=self.spatial_dims).to(
            self.device
        )
        self.surrogate_optimizer = torch.optim.Adam(self.surrogate.parameters(), lr=self.lr_surrogate)

    @staticmethod
    def _pad16(x: torch.Tensor, minimum: int = 16, multiple: int = 16) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Replicate-pad every spatial axis (2-D or 3-D) up to a multiple of ``multiple``, at least ``minimum``."""
        spatial = tuple(int(s) for s in x.shape[2:])
        pads = [max(minimum, size + (-size) % multiple) - size for size in spatial]
        if any(pads):
            x = F.pad(x, tuple(p for pad in reversed(pads) for p in (0, pad)), mode="replicate")
        return x, spatial

    @staticmethod
    def _crop(x: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
        return x[(..., *(slice(0, size) for size in spatial))]

    def _raw(self, net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        padded, spatial = self._pad16(images)
        return self._crop(net(padded), spatial)

    def surrogate_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Surrogate logits (inputs replicate-padded to the network's multiple, 16 or 32, and at least twice it,
        then cropped)."""
        multiple = segmenter_multiple(self.surrogate_name, images.dim() - 2)
        padded, spatial = self._pad16(images, minimum=2 * multiple, multiple=multiple)
        return self._crop(self.surrogate(padded), spatial)

    def release_region(self, *spatial: int) -> tuple[str, int]:
        """The ROI and its contour band (``"dilated"``; the band alone with ``contour_only``, the ROI with
        ``texture_only``), or anywhere (``"full"``) when ``background_noise`` adds noise outside them."""
        radius = contour_radius(*(int(s) for s in spatial), base_radius=self.contour_radius)
        if self.background_noise > 0:
            return "full", 0
        if self.contour_only:
            return "contour", radius
        if self.texture_only:
            return "roi", radius
        return "dilated", radius

    def regions(
        self, images: torch.Tensor, labels: torch.Tensor, strength: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(y_c, y_t, bound_t)``: contour band, ROI interior and the per-pixel texture bound.

        Args:
            images: ``(B, C, H, W)`` images in [0, 1].
            labels: ``(B, 1, H, W)`` binary masks.
            strength: the images' :func:`texture_strength` map when already computed.

        Returns:
            Three ``(B, 1, H, W)`` tensors; ``bound_t = eps * x_t * y_t`` (``eps * y_t`` if ``fixed_bound``).
        """
        radius = contour_radius(*(int(s) for s in images.shape[2:]), base_radius=self.contour_radius)
        band = contour_band(labels.float(), radius)
        interior = (labels > 0.5).float() * (1.0 - band)
        if self.fixed_bound:
            bound = self.eps * interior
        else:
            if strength is None:
                strength = texture_strength(images, self.lbp_points, self.lbp_radius)
            bound = self.eps * strength * interior
        return band, interior, bound

    def background_delta(
        self, images: torch.Tensor, labels: torch.Tensor, strength: torch.Tensor | None
    ) -> torch.Tensor:
        """The label-free background noise of ``background_noise`` (zeros when the option is 0).

        Args:
            images: ``(B, C, H, W)`` images in [0, 1] on the protector's device.
            labels: ``(B, 1, H, W)`` binary masks.
            strength: the images' :func:`texture_strength` map (may be ``None`` when ``background_noise`` is 0).

        Returns:
            ``background_noise * eps * x_t * sign`` outside ``dilate(y, r)`` (the ROI and its contour band),
            zero inside it and in images whose mask is empty; the signs are random per pixel and channel,
            seeded per image by ``seed`` and the image's 8-bit content.
        """
        if self.background_noise <= 0:
            return torch.zeros_like(images)
        radius = contour_radius(*(int(s) for s in images.shape[2:]), base_radius=self.contour_radius)
        outside = 1.0 - dilate_mask(labels, radius)
        has_roi = (labels.flatten(1).amax(dim=1) > 0.5).float().view(-1, 1, 1, 1)
        quantized = (images.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
        signs = []
        for image in quantized:
            digest = hashlib.blake2b(image.tobytes(), digest_size=8, key=str(self.seed).encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
            signs.append(torch.randint(0, 2, image.shape, generator=generator).float() * 2.0 - 1.0)
        sign = torch.stack(signs).to(images.device)
        return self.background_noise * self.eps * strength * outside * has_roi * sign

    def deltas(
        self, images: torch.Tensor, labels: torch.Tensor, regions: tuple[torch.Tensor, ...] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(delta_c, delta_t)`` for a batch, each inside its own bound (differentiable in the generators).

        Args:
            images: ``(B, C, H, W)`` images in [0, 1] on the protector's device.
            labels: ``(B, 1, H, W)`` binary masks.
            regions: ``regions(images, labels)`` when already computed for this batch.

        Returns:
            ``delta_c = clip(F_c(x) * y_c, +-eps)`` and ``delta_t = clip(F_t(x), +-eps * x_t * y_t)``
            (``output="linear"``, the paper's clip), or their smooth forms ``eps * tanh(F_c(x)) * y_c`` and
            ``eps * x_t * y_t * tanh(F_t(x))`` (``output="tanh"``), which stay inside the same bounds while
            keeping a gradient at every pixel (a clip to a per-pixel bound below ``eps`` silences most of it).
        """
        band, _, bound = regions if regions is not None else self.regions(images, labels)
        zeros = torch.zeros_like(images)
        smooth = self.output == "tanh"
        if self.texture_only:
            delta_c = zeros
        else:
            raw_c = self._raw(self.contour_net, images)
            delta_c = self.eps * torch.tanh(raw_c) * band if smooth else (raw_c * band).clamp(-self.eps, self.eps)
        if self.contour_only:
            delta_t = zeros
        else:
            raw_t = self._raw(self.texture_net, images)
            delta_t = bound * torch.tanh(raw_t) if smooth else torch.maximum(torch.minimum(raw_t, bound), -bound)
        return delta_c, delta_t

    # ------------------------------------------------------------------ training
    def prepare(self, first_batch: dict, num_classes: int = 2, num_samples: int = 0) -> None:
        """Build networks from the first batch's channel count (``num_classes`` must be 2)."""
        if num_classes != 2:
            raise MedueError(f"umed segments one foreground class (num_classes 2), got {num_classes}")
        image = _tensor(first_batch["image"])
        self.build(int(image.shape[1]), image.dim() - 2)
        self.current_epoch = 0
        self._reset_epoch = -1
        self.history = []

    def set_epoch(self, epoch: int) -> None:
        """Set the 0-based epoch that decides the phase of the next iterations (surrogate or generators).

        With ``reset_every``, the surrogate and its optimizer are re-initialized at the start of every
        ``reset_every``-th epoch (once per epoch, however often this is called), from a seed derived from
        the epoch, without disturbing the global random stream; a resumed fit therefore resets exactly as
        an uninterrupted one.
        """
        epoch = int(epoch)
        reset_seed = surrogate_reset_seed(self.seed, epoch, self.reset_every)
        if reset_seed is not None and self.surrogate is not None and epoch != self._reset_epoch:
            with torch.random.fork_rng(devices=[]):
                self._build_surrogate(seed=reset_seed)
            self._reset_epoch = epoch
        self.current_epoch = epoch

    def phase(self, epoch: int | None = None) -> str:
        """``"surrogate"`` when ``epoch % cycle == 0``, else ``"generators"``."""
        if self.alternation == "batch":
            return "both"
        epoch = self.current_epoch if epoch is None else epoch
        return "surrogate" if epoch % self.cycle == 0 else "generators"

    def train_iteration(self, batch: dict) -> dict[str, float]:
        """One minibatch of the current epoch's phase; returns ``{"loss", "phase_surrogate"}``."""
        images = _tensor(batch["image"]).float().to(self.device)
        labels = (_tensor(batch["label"]).float().to(self.device) > 0.5).float()
        phase = self.phase()
        if phase == "both":
            regions = self.regions(images, labels)  # LBP once per batch, shared by all steps
            for _ in range(self.generator_steps):
                self._generator_step(images, labels, regions)
            return self._surrogate_step(images, labels, regions)
        if phase == "surrogate":
            return self._surrogate_step(images, labels)
        return self._generator_step(images, labels)

    def _surrogate_step(self, images: torch.Tensor, labels: torch.Tensor, regions=None) -> dict[str, float]:
        """One Adam step of the surrogate on the current perturbed batch (plus clean negatives if asked)."""
        self.surrogate.train()
        with torch.no_grad():
            delta_c, delta_t = self.deltas(images, labels, regions)
        protected = (images + delta_c + delta_t).clamp(0.0, 1.0)
        if self.clean_negatives > 0:
            # one forward pass over both halves (the U-Net normalizes per instance, so they do not mix)
            logits = self.surrogate_logits(torch.cat([protected, images]))
            perturbed_logits, clean_logits = logits.split(images.shape[0])
            loss = self.loss(perturbed_logits, labels)
            objective = loss + self.clean_negatives * self.loss(clean_logits, torch.zeros_like(labels))
        else:
            loss = objective = self.loss(self.surrogate_logits(protected), labels)
        self._step(self.surrogate_optimizer, objective)
        # "loss" stays the DiceCE on the perturbed batch (comparable with and without clean negatives)
        return {"loss": float(loss.detach()), "phase_surrogate": 1.0}

    def _generator_step(self, images: torch.Tensor, labels: torch.Tensor, regions=None) -> dict[str, float]:
        """One Adam step of both generators, minimizing the frozen surrogate's loss on the perturbed batch."""
        self.surrogate.eval()
        self.contour_net.train()
        self.texture_net.train()
        self.surrogate.requires_grad_(False)
        try:
            delta_c, delta_t = self.deltas(images, labels, regions)
            protected = (images + delta_c + delta_t).clamp(0.0, 1.0)
            loss = self.loss(self.surrogate_logits(protected), labels)
            self._step(self.generator_optimizer, loss)
        finally:
            self.surrogate.requires_grad_(True)
        return {"loss": float(loss.detach()), "phase_surrogate": 0.0}

    def finalize(self, loader: Iterable[dict] | None = None) -> None:
        """Freeze all networks in eval mode and mark the protector fitted (``loader`` is unused)."""
        for net in (self.contour_net, self.texture_net, self.surrogate):
            net.eval()
            net.requires_grad_(False)
        self.fitted = True

    def epoch_record(self, loader: Iterable[dict], epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        """The epoch's phase (``both``, ``surrogate`` or ``generators``) and mean loss."""
        return {"epoch": int(epoch), "phase": self.phase(epoch), "loss": float(stats.get("loss", float("nan")))}

    def training_state(self) -> dict[str, Any]:
        """Networks, optimizers and history (for resuming an interrupted fit)."""

        return {
            **self._network_states(),
            "generator_optimizer": self.generator_optimizer.state_dict(),
            "surrogate_optimizer": self.surrogate_optimizer.state_dict(),
            "history": list(self.history),
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`training_state` after :meth:`prepare` built the networks."""
        self.contour_net.load_state_dict(state["contour_net"])
        self.texture_net.load_state_dict(state["texture_net"])
        self.surrogate.load_state_dict(state["surrogate"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.surrogate_optimizer.load_state_dict(state["surrogate_optimizer"])
        self.history = list(state["history"])

    # ------------------------------------------------------------------ apply
    @torch.no_grad()
    def perturb(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """One forward pass of both generators: ``clip(x + delta_c + delta_t + delta_b, 0, 1) - x``.

        ``delta_b`` is the label-free background noise of ``background_noise`` (zero by default).

        Args:
            images: ``(B, C, H, W)`` images in [0, 1].
            labels: ``(B, 1, H, W)`` binary masks (an empty mask gives a zero perturbation).
            indices: unused (UMed generalizes to new images).

        Returns:
            The perturbation, on the images' device and dtype.
        """
        self._require_fitted()
        images_t = _tensor(images)
        x = images_t.float().to(self.device)
        y = (_tensor(labels).float().to(self.device) > 0.5).float()
        if y.ndim == x.ndim - 1:
            y = y[:, None]
        if x.dim() - 2 != self.spatial_dims:
            raise MedueError(f"umed was fitted on {self.spatial_dims}-D images, got {x.dim() - 2}-D ones")
        if x.shape[1] != self.in_channels:
            raise MedueError(f"umed was fitted on {self.in_channels}-channel images, got {x.shape[1]} channels")
        # the LBP map is computed once, and only where the texture bound or the background noise uses it
        needs_strength = not self.fixed_bound or self.background_noise > 0
        strength = texture_strength(x, self.lbp_points, self.lbp_radius) if needs_strength else None
        delta_c, delta_t = self.deltas(x, y, self.regions(x, y, strength))
        delta_b = self.background_delta(x, y, strength)
        delta = (x + delta_c + delta_t + delta_b).clamp(0.0, 1.0) - x
        return delta.to(device=images_t.device, dtype=images_t.dtype)
