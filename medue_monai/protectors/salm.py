"""SALM (sparsity-aware local masking) and EM (error-minimizing noise) for classification.

SALM (Sun et al., "Medical Unlearnable Examples: Securing Medical Data from Unauthorized
Training via Sparsity-Aware Local Masking") solves the bi-level min-min problem
``min_theta E[min_delta L(f_theta(t(x + delta)), y)]`` subject to ``||delta||_inf <= eps`` and
``||delta||_0 <= K% of the pixel positions``. Each step ranks pixel positions by the magnitude
of the loss gradient, takes an error-minimizing sign step only on the top-K% positions, and
interleaves those noise steps with SGD steps of the surrogate on the perturbed minibatch.
EM (Huang et al., ICLR 2021) is the same machinery with K = 100 and no sampled transforms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from ..nets import ClassifierEnsemble, get_classifier, resolve_classifier
from ..utils import MedueError
from .augment import TRANSFORM_NAMES, parse_transform_names, sample_transform
from .base import BilevelProtector, EMRound, register_protector, surrogate_reset_seed
from .budget import (
    TILE_PATTERNS,
    block_average,
    project_l0,
    project_linf,
    tile_pattern_field,
    tile_side,
    topk_position_mask,
)
from .distributed import reduce_sum

__all__ = ["SALMProtector", "EMProtector"]

SCHEDULES = ("minibatch", "em")
L0_MODES = ("every_step", "final", "anneal", "none")
RANKS = ("magnitude", "signed")
OPTIMIZERS = ("sgd", "adam")
# ``optimizer="adam"`` with ``lr=None``: 1e-3, the cls-quick exploiter's Adam learning rate.
ADAM_LR = 1e-3
# ``lr=None``: the paper's SGD lr 0.1 for its ResNet-18; 0.01 for ``smallcnn``, the value all our
# smallcnn runs (demo, CPU benchmarks) were measured with; 0.1 was not measured for it.
SURROGATE_LR = {"smallcnn": 0.01, "smallcnn-batchnorm": 0.01}
DEFAULT_LR = 0.1


def _batch_tensors(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = batch["image"]
    images = images.as_tensor() if hasattr(images, "as_tensor") else images
    labels = torch.as_tensor(batch["label"]).reshape(-1).long()
    indices = torch.as_tensor(batch["index"]).reshape(-1).long()
    return images.float().to(device), labels.to(device), indices.to(device)


@register_protector("salm")
class SALMProtector(BilevelProtector):
    """Sparsity-aware local masking (SALM), sample-wise or class-wise, with an L-inf and an L0 budget.

    Defaults from the SALM paper: ``eps=8/255``, ``k=10``, SGD ``momentum=0.9``, ``weight_decay=5e-4``,
    per-minibatch alternation of noise and model (its Algorithm 1), stop on the step budget ``M`` (here
    ``epochs`` passes). ``surrogate="resnet18"`` (28x28 stem, SGD ``lr=0.1``) gives the paper's surrogate.
    Defaults chosen by us (the paper is silent, or its choice did not hold in our measurements):
    ``surrogate="smallcnn"``, MONAI's small residual ``Classifier`` with SGD ``lr=0.01``, on every device,
    so that a release does not depend on the hardware it was made on. With the default 4x4 tiles it
    protected far more than the paper's ResNet-18 on BreastMNIST (three seeds: mean 58.12 % against 77.14 %
    protected-trained ResNet-18 accuracy) and a little less on the first 1000 PneumoniaMNIST training
    images, where neither protected much (two seeds: 83.81 / 81.57 % against 77.40 / 80.77 %, clean-trained
    83.17 / 82.85 %), in a fraction of the time (22-24 s against 735.7 s for a BreastMNIST fit on 2 CPU
    cores; session 24, ``benchmarks/README.md``). The manifest records the network and lr.
    ``epochs=30``, ``batch_size=64``, ``noise_steps=2``
    sign steps of ``step_size=2/255`` per minibatch, ``num_transforms=1`` (J; > 1 samples flip /
    crop / blur / low-pass), ``l0_projection="final"`` (masks recomputed per step as in Algorithm 1,
    one hard K% threshold at the end; projecting after every step converged worse in our GPU
    calibration: BreastMNIST 84.62 % vs 67.95 % protected-trained accuracy, ``benchmarks/README.md``),
    ``apply_steps=20`` for new images, no error stop, ``block=4`` (the K% budget spent on whole 4x4 tiles of
    one value instead of single pixels: more protection undefended in our measurements, and unlike single
    pixels it survives a 3x3 Gaussian or median filter; see ``block``). ``fit`` is resumable (:attr:`checkpoint`).

    Args:
        eps: L-inf budget in [0, 1] units.
        k: percent of pixel positions (H*W, channels counted once) allowed to change, in (0, 100]. The
            sparsity is what limits protection: on BreastMNIST (CPU surrogate, ResNet-18 exploiter) K 10
            left 57.69-68.59 % clean-test accuracy over three seeds, ``k=100`` 41.03 / 45.51 %
            (``benchmarks/README.md``).
        surrogate: surrogate network name (see :func:`medue_monai.nets.get_classifier`), or ``"auto"``
            (``"resnet18"`` on a GPU, ``"smallcnn"`` on a CPU; EM's default, and SALM's until session 24).
        epochs: passes over the training set (caps the bi-level loop; ``M = epochs * batches``).
            With ``schedule="em"`` it caps the number of EM rounds instead.
        batch_size: minibatch size used by callers that build the loader (CLI, bundles).
        noise_steps: sign-PGD steps per minibatch (the paper's Eq. 6 allows several).
        step_size: sign-step size alpha in [0, 1] units.
        num_transforms: J, transforms sampled per gradient (1 = none). On BreastMNIST (CPU, seed 0) J = 4 kept
            the protection through a 3x3 median filter and JPEG 30 that erase it at J = 1, but not through a
            random crop + flip, and protected no better undefended (3 seeds; ``benchmarks/README.md``).
        transforms: the transforms J draws from, uniformly, one per gradient for the whole batch: comma-separated
            names out of ``identity``, ``flip``, ``crop`` (one shift of up to 2 pixels), ``blur`` (3x3 Gaussian),
            ``lowpass`` (2x average-pool and back) and ``crop-flip`` (per sample: random crop after 4-pixel zero
            padding plus a random flip, the exploiter-side standard augmentation). Default: the first five
            (ours). Used only when ``num_transforms > 1``. On BreastMNIST (CPU, seed 0) ``num_transforms=4,
            transforms="crop-flip"`` did not survive an exploiter trained with crop + flip (80.13 % against 81.41 %
            clean-trained) and lost the undefended protection (80.77 % against 56.41 % for the defaults).
        stop_error: stop once the surrogate's error on the perturbed training set is below this
            (EM's rule); ``None`` runs all epochs.
        schedule: ``"minibatch"`` (SALM's Algorithm 1) or ``"em"`` (EM's: ``em_model_steps`` SGD
            steps, then a full pass of ``em_noise_steps`` PGD steps per batch, per round).
        lr: surrogate learning rate; ``None``: with SGD 0.1 (the paper's) for the ResNets, VGG and DenseNet and
            0.01 for ``smallcnn``; with ``optimizer="adam"`` 1e-3.
        momentum: surrogate SGD momentum (unused with ``optimizer="adam"``).
        weight_decay: surrogate weight decay (SGD or Adam).
        em_model_steps: SGD steps per round for ``schedule="em"``.
        em_noise_steps: PGD steps per batch per round for ``schedule="em"``.
        classwise: one delta per class (the mean of its samples' gradients) instead of per sample.
        apply_steps: sign-PGD steps against the frozen surrogate when perturbing new images.
        l0_projection: ``"final"``: the mask is recomputed from the gradient at every step (as in the
            paper's Algorithm 1) and the deltas are hard-thresholded to K% of positions at the end, keeping
            the largest ``|delta|`` with ties broken by how much each position lowers the surrogate's loss;
            ``"every_step"``: project onto the K% budget after every step (the surrogate then only ever sees
            the released noise, but in our calibration it converged worse and protected less);
            ``"anneal"``: project after every step onto a budget that shrinks from 100 % to K over the first
            ``anneal_fraction`` of the epochs (:meth:`annealed_k`), so the surrogate adapts to the sparse
            noise while the noise gathers on the positions that matter most (with ``reset_every=5``, three
            seeds on BreastMNIST gave the defaults' protection, ``benchmarks/README.md``);
            ``"none"``: the paper's Algorithm 1 read literally: the per-step mask restricts each sign step to
            the top-K% positions, but nothing bounds the union of positions changed over all steps, so the
            released noise is NOT limited to K% of the positions (``l0_share`` in the evaluation says how
            many changed). For comparison with the paper's numbers only: on BreastMNIST (CPU, seeds 0-2) it
            touched about 20 % of the positions and left 62.82 / 68.59 / 61.54 %, no better than ``"final"``.
        anneal_fraction: with ``l0_projection="anneal"``, the share of ``epochs`` over which the budget
            shrinks to K, in (0, 1].
        reset_every: re-initialize the surrogate every this many epochs (0 = never), so the noise keeps
            being shaped against young networks, as an unauthorized model trained from scratch is.
            With ``schedule="em"`` epochs are rounds (for ``anneal`` too).
        rank: how each step picks its top-K% positions from the loss gradient ``g``: ``"magnitude"``
            (largest ``|g|``: the positions where a sign step lowers the loss most) or ``"signed"`` (largest
            ``g``, as the paper's Algorithm 1 writes it: ``M_ij = 1 if g_ij >= g^0(k)``). Since the step is
            ``delta - alpha * sign(M * g)``, ``"signed"`` moves pixels only downwards while at least K% of
            the positions have a positive gradient, so the released noise is a sparse pattern of darkened
            pixels whose positions, not signs, carry the class. Irrelevant at ``k=100`` (EM). On BreastMNIST
            (CPU, seeds 0-2, ``block=1``) it left 52.56 / 71.79 / 67.31 % against 68.59 / 65.38 / 57.69 % for
            ``"magnitude"``: the same mean, so it is not the default (``benchmarks/README.md``).
        block: side of the square tiles the perturbation is made of (1 = single pixels, as in the paper).
            With ``block > 1`` each step averages the gradient over every ``block x block`` tile (the gradient
            of a tile-constant perturbation), ranks tiles by that mean and moves the top ones as wholes, and
            the final threshold keeps whole tiles: still at most K% of the positions, as
            ``positions_to_keep // block**2`` tiles of one value each (smaller tiles where one would exceed the
            budget: :func:`~medue_monai.protectors.budget.tile_side`). A 3x3 low-pass filter averages isolated
            pixels away but keeps most of a larger tile. On BreastMNIST (CPU, ResNet-18 exploiter, seeds 0-2)
            ``block=4`` left 56.41 / 60.26 / 57.69 % clean-test accuracy, ``block=3`` 67.31 / 69.87 / 50.64 %,
            ``block=1`` 68.59 / 65.38 / 57.69 %; with a 3x3 Gaussian filter on the exploiter's training images
            ``block=4`` 64.74 / 62.82 / 63.46 %, ``block=3`` 64.74 / 73.08 / 62.18 % (clean-trained 83.97 /
            83.33 / 83.97 %), where ``block=1`` lost all protection (seed 0: 83.97 %); with a 3x3 median
            filter (seed 0) ``block=4`` 62.18 %, ``block=3`` 68.59 %, ``block=1`` 83.33 % (clean-trained
            83.97 %); ``block=2`` kept less through the Gaussian filter (78.21 %, seed 0). At 28x28 and K = 10 %
            ``block=4`` keeps 4 tiles (8.16 % of the positions). ``benchmarks/README.md`` has the runs.
        pattern: what one tile's single value multiplies (ours; used with ``block > 1``): ``"flat"`` (the
            tile is one constant offset) or ``"checker"`` (the tile is a +-eps checkerboard whose phase, the
            sign, is what the noise chooses; :func:`~medue_monai.protectors.budget.tile_pattern_field`). The
            gradient of such a tile is the tile's mean of the loss gradient times the pattern. A flat 4x4
            offset of 8/255 is small next to the local contrast of the anatomy under it (on BreastMNIST's
            training images the std of a 4x4 tile's mean minus its four neighbours' is 1.2-2.5 times the
            offset), whereas a checkerboard sits at the spatial frequency where these images carry the least
            energy (its amplitude is 5.6-11.6 times the std of the images' own checkerboard component), so a
            network can read it on any image. On BreastMNIST (CPU, ResNet-18 exploiter, seeds 0-4) ``"checker"``
            left 52.56 / 61.54 / 60.26 / 39.10 / 53.85 % clean-test accuracy (mean 53.46 % against 58.85 % for
            flat tiles) but the same balanced accuracy (58.38 against 57.41 %) and ROC AUC (59.96 against
            60.84 %): the exploiters learned as much and answered the minority class more often. A 3x3 Gaussian
            filter on the exploiter's training images removes a checkerboard (seed 0: 84.62 % against 83.97 %
            clean-trained) where it keeps most of a flat tile (64.74 %), so ``"flat"`` is the default
            (``benchmarks/README.md``).
        mix_images: decouple each delta from its own image (ours; off = the paper's objective): every
            surrogate step sees each sample's delta on another image of the minibatch (a random
            permutation) with the delta's label, and every noise step adds the gradient of the delta on that
            other image to the gradient on its own. The surrogate then learns the deltas rather than the
            anatomy, and each delta must carry its label whatever image it sits on, so no sample's noise is
            left weak where its anatomy happens to be easy. Each noise step costs two gradients. On
            BreastMNIST (CPU, ResNet-18 exploiter, seeds 0-4) it left 54.49 / 67.31 / 45.51 / 56.41 / 67.95 %
            clean-test accuracy (mean 58.33 %) against the defaults' 56.41 / 60.26 / 57.69 / 71.15 / 48.72 % (mean
            58.85 %): no measurable difference, so it is off by default (``benchmarks/README.md``).
        optimizer: the surrogate's optimizer, ``"sgd"`` (the paper's, with ``momentum``) or ``"adam"`` (ours:
            the optimizer of the cls-quick exploiter; ``lr=None`` then means 1e-3). On BreastMNIST (CPU,
            ResNet-18 exploiter, seeds 0-2) ``"adam"`` left 55.77 / 64.10 / 58.33 % clean-test accuracy (mean
            59.40 %) against 56.41 / 60.26 / 57.69 % (mean 58.12 %) with SGD: no gain, so SGD stays
            (``benchmarks/README.md``).
        surrogates: number of surrogate networks of the same architecture, each with its own initialization,
            trained side by side (ours; 1 = the paper's single surrogate). Each noise step lowers the mean of
            their cross-entropies, so the noise has to be a shortcut for all of them; each model step trains
            every member as if alone (:class:`~medue_monai.nets.ClassifierEnsemble`). Costs about this many
            times the fit time. On BreastMNIST (CPU, seeds 0-4) ``surrogates=3`` left 51.28 / 65.38 / 56.41 / 74.36 /
            52.56 % (mean 60.00 %) against the single surrogate's 58.85 %: no gain, so 1 stays.
        progress: show tqdm progress bars.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        MedueError: for options outside their ranges.
    """

    # checkpoints saved before ``block`` existed hold per-pixel noise
    legacy_defaults = {"block": 1, "pattern": "flat"}
    # options of earlier versions that are gone; a saved protector that names them still loads
    retired_options = ("refine_epochs",)

    def __init__(
        self,
        eps: float = 8 / 255,
        k: float = 10.0,
        surrogate: str = "smallcnn",
        epochs: int = 30,
        batch_size: int = 64,
        noise_steps: int = 2,
        step_size: float = 2 / 255,
        num_transforms: int = 1,
        transforms: str | tuple[str, ...] = ",".join(TRANSFORM_NAMES),
        stop_error: float | None = None,
        schedule: str = "minibatch",
        lr: float | None = None,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        em_model_steps: int = 10,
        em_noise_steps: int = 20,
        classwise: bool = False,
        apply_steps: int = 20,
        l0_projection: str = "final",
        anneal_fraction: float = 0.5,
        reset_every: int = 0,
        rank: str = "magnitude",
        block: int = 4,
        pattern: str = "flat",
        mix_images: bool = False,
        optimizer: str = "sgd",
        surrogates: int = 1,
        progress: bool = True,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> None:
        super().__init__(eps=eps, seed=seed, device=device)
        if not 0.0 < float(k) <= 100.0:
            raise MedueError(f"k must be a percentage in (0, 100], got {k}")
        if schedule not in SCHEDULES:
            raise MedueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if l0_projection not in L0_MODES:
            raise MedueError(f"l0_projection must be one of {L0_MODES}, got {l0_projection!r}")
        if rank not in RANKS:
            raise MedueError(f"rank must be one of {RANKS}, got {rank!r}")
        if pattern not in TILE_PATTERNS:
            raise MedueError(f"pattern must be one of {TILE_PATTERNS}, got {pattern!r}")
        if optimizer not in OPTIMIZERS:
            raise MedueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        for option, value in (
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("num_transforms", num_transforms),
            ("surrogates", surrogates),
        ):
            if int(value) < 1:
                raise MedueError(f"{option} must be >= 1, got {value}")
        if lr is not None and not float(lr) > 0.0:
            raise MedueError(f"lr must be > 0, got {lr}")
        if int(block) < 1:
            raise MedueError(f"block must be >= 1, got {block}")
        if int(reset_every) < 0:
            raise MedueError(f"reset_every must be >= 0, got {reset_every}")
        if not 0.0 < float(anneal_fraction) <= 1.0:
            raise MedueError(f"anneal_fraction must be in (0, 1], got {anneal_fraction}")
        if stop_error is not None and not 0.0 <= stop_error < 1.0:
            raise MedueError(f"stop_error must be in [0, 1), got {stop_error}")
        self.k = float(k)
        self.surrogate_name = resolve_classifier(surrogate, self.device)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.noise_steps = int(noise_steps)
        self.step_size = float(step_size)
        self.num_transforms = int(num_transforms)
        self.transforms = parse_transform_names(transforms)
        self.stop_error = stop_error
        self.schedule = schedule
        self.optimizer_name = optimizer
        self.num_surrogates = int(surrogates)
        if lr is None:
            lr = ADAM_LR if optimizer == "adam" else SURROGATE_LR.get(self.surrogate_name.lower(), DEFAULT_LR)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.em_model_steps = int(em_model_steps)
        self.em_noise_steps = int(em_noise_steps)
        self.classwise = bool(classwise)
        self.apply_steps = int(apply_steps)
        self.l0_projection = l0_projection
        self.anneal_fraction = float(anneal_fraction)
        self.reset_every = int(reset_every)
        self.rank = rank
        self.block = int(block)
        self.pattern = pattern
        self.mix_images = bool(mix_images)
        self._l0_each_step = l0_projection == "every_step"
        self._projection_k = self.k
        self.progress = bool(progress)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.surrogate: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.delta: torch.Tensor | None = None
        self.num_classes = 0
        self.image_shape: tuple[int, int, int] | None = None
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ config / state
    def config(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "k": self.k,
            "surrogate": self.surrogate_name,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "noise_steps": self.noise_steps,
            "step_size": self.step_size,
            "num_transforms": self.num_transforms,
            "transforms": ",".join(self.transforms),
            "stop_error": self.stop_error,
            "schedule": self.schedule,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "em_model_steps": self.em_model_steps,
            "em_noise_steps": self.em_noise_steps,
            "classwise": self.classwise,
            "apply_steps": self.apply_steps,
            "l0_projection": self.l0_projection,
            "anneal_fraction": self.anneal_fraction,
            "reset_every": self.reset_every,
            "rank": self.rank,
            "block": self.block,
            "pattern": self.pattern,
            "mix_images": self.mix_images,
            "optimizer": self.optimizer_name,
            "surrogates": self.num_surrogates,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {
            "surrogate": {k: v.detach().cpu() for k, v in self.surrogate.state_dict().items()},
            "delta": self.delta.detach().cpu(),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_classes = int(state["num_classes"])
        self.image_shape = tuple(int(s) for s in state["image_shape"])
        self._build_surrogate()
        self.surrogate.load_state_dict(state["surrogate"])
        self.delta = state["delta"].to(self.device)
        self.history = list(state.get("history", []))
        self._freeze()
        self.fitted = True

    # ------------------------------------------------------------------ building blocks
    def _build_surrogate(self, seed: int | None = None) -> None:
        channels, height = self.image_shape[0], self.image_shape[1]
        spatial_dims = len(self.image_shape) - 1
        torch.manual_seed(self.seed if seed is None else seed)

        def build() -> torch.nn.Module:
            return get_classifier(self.surrogate_name, channels, self.num_classes, height, spatial_dims)

        network = build() if self.num_surrogates == 1 else ClassifierEnsemble(build, self.num_surrogates)
        self.surrogate = network.to(self.device)
        if self.optimizer_name == "adam":
            self.optimizer = torch.optim.Adam(self.surrogate.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(
                self.surrogate.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )

    def _freeze(self) -> None:
        self.surrogate.eval()
        for parameter in self.surrogate.parameters():
            parameter.requires_grad_(False)

    def _surrogate_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the surrogate (with ``surrogates > 1``: the mean of its members') and its logits."""
        if isinstance(self.surrogate, ClassifierEnsemble):
            return self.surrogate.loss(inputs, labels)
        logits = self.surrogate(inputs)
        return F.cross_entropy(logits, labels), logits

    def _keys(self, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return labels if self.classwise else indices

    def _permutation(self, size: int) -> torch.Tensor:
        """A random order of a minibatch (drawn from the protector's generator), on the protector's device."""
        return torch.randperm(size, generator=self.generator).to(self.device)

    def _delta_gradient(self, images: torch.Tensor, delta: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over J sampled transforms of d CE(f(t(x + delta)), y) / d delta."""
        delta = delta.detach().requires_grad_(True)
        total = torch.zeros_like(delta)
        for _ in range(self.num_transforms):
            inputs = (images + delta).clamp(0.0, 1.0)
            if self.num_transforms > 1:
                inputs = sample_transform(inputs, self.generator, self.transforms)
            loss, _ = self._surrogate_loss(inputs, labels)
            total += torch.autograd.grad(loss, delta)[0]
        return total / self.num_transforms

    def _sign_step(self, rows: torch.Tensor, gradient: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """One error-minimizing masked sign step, then the L-inf (and L0) projection.

        With ``block > 1`` the gradient is first multiplied by the tile pattern and averaged over each tile
        (the gradient of a tile's single value; tiles shrink where one would exceed the K% budget,
        :func:`tile_side`), so the mask ranks whole tiles and the step moves each by its pattern.
        """
        spatial = tuple(gradient.shape[2:])
        field = tile_pattern_field(*spatial, pattern=self.pattern, device=gradient.device)
        tile_gradient = block_average(gradient * field, tile_side(math.prod(spatial), self.k, self.block, len(spatial)))
        mask = topk_position_mask(tile_gradient if self.rank == "signed" else tile_gradient.abs(), self.k, self.block)
        rows = rows - self.step_size * torch.sign(mask * tile_gradient) * field
        rows = project_linf(rows, images, self.eps) if images is not None else rows.clamp(-self.eps, self.eps)
        if self._l0_each_step:
            rows = project_l0(rows, self._projection_k, tie_break=gradient, block=self.block)
        return rows

    def annealed_k(self, epoch: int) -> float:
        """The L0 budget (percent of positions) in force during ``epoch`` (0-based).

        With ``l0_projection="anneal"`` it shrinks from 100 % to K along the cubic schedule of gradual
        pruning (Zhu & Gupta, 2017), ``K + (100 - K) * (1 - epoch / span) ** 3`` with
        ``span = ceil(anneal_fraction * epochs)``, and stays at K from epoch ``span`` on; otherwise K.
        """
        if self.l0_projection != "anneal":
            return self.k
        span = max(1, math.ceil(self.anneal_fraction * self.epochs))
        remaining = max(0.0, 1.0 - epoch / span)
        return self.k + (100.0 - self.k) * remaining**3

    def set_epoch(self, epoch: int) -> None:
        """Set the 0-based epoch of the next iterations.

        The annealed L0 budget depends on it, and with ``reset_every`` the surrogate (and its optimizer)
        is re-initialized at the start of every ``reset_every``-th epoch, from a seed derived from the
        epoch, without disturbing the global random stream.
        """
        reset_seed = surrogate_reset_seed(self.seed, epoch, self.reset_every)
        if reset_seed is not None and self.surrogate is not None:
            with torch.random.fork_rng(devices=[]):
                self._build_surrogate(seed=reset_seed)
        if self.l0_projection == "anneal":
            self._projection_k = self.annealed_k(epoch)
            self._l0_each_step = self._projection_k < 100.0

    def noise_step(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, steps: int) -> None:
        """Update the stored deltas of a minibatch with ``steps`` masked sign-PGD steps.

        Args:
            images: ``(B, C, H, W)`` clean images on the protector's device.
            labels: ``(B,)`` class indices.
            indices: ``(B,)`` training-set indices.
            steps: number of sign steps.
        """
        self.surrogate.eval()
        keys = self._keys(labels, indices)
        if not self.classwise:
            self._own(indices)
        shuffled = images[self._permutation(len(images))] if self.mix_images else None
        for _ in range(steps):
            gradient = self._delta_gradient(images, self.delta[keys], labels)
            if shuffled is not None:
                gradient = gradient + self._delta_gradient(shuffled, self.delta[keys], labels)
            if self.classwise:
                unique, inverse = keys.unique(return_inverse=True)
                summed = torch.zeros((len(unique),) + gradient.shape[1:], device=gradient.device)
                summed.index_add_(0, inverse, gradient)
                self.delta[unique] = self._sign_step(self.delta[unique], summed, None)
            else:
                self.delta[keys] = self._sign_step(self.delta[keys], gradient, images)

    def model_step(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> tuple[float, float]:
        """One SGD step of the surrogate on ``t(x + delta)``; returns (loss, accuracy) on the batch."""
        self.surrogate.train()
        if self.mix_images:
            images = images[self._permutation(len(images))]
        inputs = (images + self.delta[self._keys(labels, indices)]).clamp(0.0, 1.0)
        if self.num_transforms > 1:
            inputs = sample_transform(inputs, self.generator, self.transforms)
        loss, logits = self._surrogate_loss(inputs, labels)
        if not torch.isfinite(loss):
            raise MedueError(
                f"{self.name}: the surrogate diverged (loss {float(loss)}); "
                "lower its learning rate, e.g. --option lr=0.01"
            )
        self._step(self.optimizer, loss)
        return float(loss.detach()), float((logits.argmax(1) == labels).float().mean())

    def train_iteration(self, item: Any) -> dict[str, float]:
        """One work item of the epoch (the body that :class:`~medue_monai.protectors.BilevelTrainer` runs).

        ``schedule="minibatch"`` (SALM's Algorithm 1): a collated batch, its noise steps then one model step.
        ``schedule="em"``: ``("model", batch)``, one surrogate step, or ``("noise", batch)``, ``em_noise_steps``
        noise steps (:class:`~medue_monai.protectors.base.EMRound`).
        """
        kind, batch = item if isinstance(item, tuple) else ("both", item)
        images, labels, indices = _batch_tensors(batch, self.device)
        if kind != "model":
            self.noise_step(images, labels, indices, self.noise_steps if kind == "both" else self.em_noise_steps)
        if kind == "noise":
            return {}
        loss, accuracy = self.model_step(images, labels, indices)
        return {"loss": loss, "train_accuracy": accuracy}

    def epoch_plan(self, loader: Iterable[dict]) -> Iterable[Any]:
        """The minibatch schedule iterates the loader; EM's schedule a round (:class:`EMRound`)."""
        return loader if self.schedule == "minibatch" else EMRound(loader, self.em_model_steps)

    def epoch_record(self, loader: Iterable[dict], epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        """Loss and accuracy of the epoch's surrogate steps, and the perturbed-train error with ``stop_error``."""
        record = {"epoch": int(epoch), **stats}
        if self.stop_error is not None:
            record["perturbed_error"] = self.perturbed_error(loader)
        return record

    @torch.no_grad()
    def perturbed_error(self, loader: Iterable[dict]) -> float:
        """Error of the surrogate (eval mode) on the perturbed training set."""
        self.surrogate.eval()
        wrong, total = 0, 0
        for batch in loader:
            images, labels, indices = _batch_tensors(batch, self.device)
            inputs = (images + self.delta[self._keys(labels, indices)]).clamp(0.0, 1.0)
            wrong += int((self.surrogate(inputs).argmax(1) != labels).sum())
            total += len(labels)
        wrong, total = reduce_sum(wrong, total)
        return wrong / max(total, 1)

    def prepare(self, first_batch: dict, num_classes: int, num_samples: int) -> None:
        """Create the surrogate, its optimizer and the zero deltas (called by the trainer)."""
        torch.manual_seed(self.seed)
        images, _, _ = _batch_tensors(first_batch, self.device)
        self.image_shape = tuple(int(s) for s in images.shape[1:])
        self.num_classes = int(num_classes)
        self._build_surrogate()
        rows = num_classes if self.classwise else num_samples
        self.delta = torch.zeros((rows,) + self.image_shape, device=self.device)
        self.owned = torch.zeros(rows, dtype=torch.bool)
        self.history = []

    def hard_threshold(self, loader: Iterable[dict] | None = None) -> None:
        """Keep the top-K% positions of every delta by ``|delta|`` (selected by index, so ties never
        let more through); ties, common after sign steps, go to the positions whose perturbation lowers
        the surrogate's loss most (first-order: ``-grad * delta``), computed over ``loader`` when given.
        """
        if loader is None or self.classwise or self.k >= 100.0:
            self.delta = project_l0(self.delta, self.k, block=self.block)
            return
        self.surrogate.eval()
        for batch in loader:
            images, labels, indices = _batch_tensors(batch, self.device)
            delta = self.delta[indices]
            contribution = (-self._delta_gradient(images, delta, labels) * delta).clamp_min(0.0)
            self.delta[indices] = project_l0(delta, self.k, tie_break=contribution, block=self.block)

    def finalize(self, loader: Iterable[dict] | None = None) -> None:
        """Hard-threshold the deltas to K% of positions (not with ``l0_projection="none"``) and freeze
        the surrogate."""
        if self.l0_projection != "none":
            self.hard_threshold(loader)
        self._freeze()
        self.fitted = True

    # ------------------------------------------------------------------ resume / perturb
    def training_state(self) -> dict[str, Any]:
        """Surrogate, optimizer, perturbations, history and the transform generator (for resuming)."""
        return {**self._surrogate_training_state(), "generator": self.generator.get_state()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`training_state` after :meth:`prepare` built the surrogate for the same data."""
        self._restore_surrogate_state(state)
        self.generator.set_state(state["generator"])

    def perturb(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Return the released perturbation for a batch.

        Class-wise: the class's pattern. Sample-wise with ``indices`` of fitted training items: the
        learned delta. Otherwise: ``apply_steps`` masked sign-PGD steps against the frozen surrogate.

        Args:
            images: ``(B, C, H, W)`` in [0, 1].
            labels: ``(B,)`` class indices.
            indices: training-set indices, or ``None`` for new images.

        Returns:
            ``delta`` (same shape, device and dtype as ``images``) with ``|delta| <= eps``, at most K%
            of positions non-zero (unless ``l0_projection="none"``) and ``images + delta`` in [0, 1].
        """
        self._require_fitted()
        device, dtype = images.device, images.dtype
        images_d = (images.as_tensor() if hasattr(images, "as_tensor") else images).float().to(self.device)
        labels_d = torch.as_tensor(labels).reshape(-1).long().to(self.device)
        if tuple(images_d.shape[1:]) != self.image_shape:
            raise MedueError(f"{self.name}: images of shape {tuple(images_d.shape[1:])}, fitted on {self.image_shape}")
        if self.classwise:
            delta = self.delta[labels_d]
        elif indices is not None:
            delta = self.delta[torch.as_tensor(indices).reshape(-1).long().to(self.device)]
        else:
            delta = torch.zeros_like(images_d)
            for _ in range(self.apply_steps):
                gradient = self._delta_gradient(images_d, delta, labels_d)
                delta = self._sign_step(delta, gradient, images_d)
        delta = project_linf(delta, images_d, self.eps)
        if self.l0_projection != "none":
            delta = project_l0(delta, self.k, block=self.block)
        return delta.to(device=device, dtype=dtype)


@register_protector("em")
class EMProtector(SALMProtector):
    """Error-minimizing noise (Huang et al., 2021): SALM's machinery with ``k=100`` and ``J=1``.

    Official EM defaults used here: ``eps=8/255``, ``step_size=0.8/255``, ``schedule="em"`` with
    10 SGD steps (lr 0.1) then 20 PGD steps per batch per round, stop when the perturbed-train
    error is below 0.01 (``epochs`` caps the rounds), per-pixel noise (``block=1``). ``classwise=True``
    gives class-wise EM. The surrogate stays ``"auto"`` (the papers' ResNet-18 on a GPU, ``smallcnn`` on a
    CPU): SALM's measurements of the two surrogates were made with sparse tiles, not with EM's dense noise.
    All SALM options remain available.
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        k: float = 100.0,
        surrogate: str = "auto",
        step_size: float = 0.8 / 255,
        schedule: str = "em",
        stop_error: float | None = 0.01,
        epochs: int = 30,
        num_transforms: int = 1,
        block: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            eps=eps,
            k=k,
            surrogate=surrogate,
            step_size=step_size,
            schedule=schedule,
            stop_error=stop_error,
            epochs=epochs,
            num_transforms=num_transforms,
            block=block,
            **kwargs,
        )
