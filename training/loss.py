"""Long-CLIP's loss: fine-grained (long caption) + coarse-grained (short caption vs primary components).

Each image is matched twice (Long-CLIP, sec. 3.2): its full feature against the long caption, and its feature
reduced to the batch's top primary components against the short caption. Both are CLIP's symmetric
contrastive loss over the global batch, with label smoothing, and the same `logit_scale`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

PCAScope = Literal["local", "global"]


def pca_reconstruct(features: torch.Tensor, components: int = 32) -> torch.Tensor:
    """Project [N, D] features onto their top `components` principal directions and back (plus the mean).

    As the reference: centre by the batch mean, SVD in float32 (`full_matrices=False`), reconstruct
    `Xc @ P @ P.T + mean` with P the top right singular vectors; not re-normalised; differentiable.
    """
    mean = features.mean(dim=0, keepdim=True)
    centred = (features - mean).float()
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    basis = vh[:components].T  # [D, k]
    return (centred @ basis @ basis.T).to(features.dtype) + mean


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """All processes' features concatenated in rank order; gradients flow back to every process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the supported autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(features), dim=0)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    all_image_features: torch.Tensor,
    all_text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    label_smoothing: float,
) -> torch.Tensor:
    """Symmetric InfoNCE of the local samples against the global batch (targets offset by this rank)."""
    local = image_features.shape[0]
    targets = _rank() * local + torch.arange(local, device=image_features.device)
    logits_per_image = logit_scale * image_features @ all_text_features.T
    logits_per_text = logit_scale * text_features @ all_image_features.T
    image_loss = F.cross_entropy(logits_per_image, targets, label_smoothing=label_smoothing)
    text_loss = F.cross_entropy(logits_per_text, targets, label_smoothing=label_smoothing)
    return (image_loss + text_loss) / 2


@dataclass
class LongCLIPLoss:
    """The Long-CLIP objective; defaults are the published recipe."""

    pca_components: int = 32
    pca_scope: PCAScope = "local"
    fine_weight: float = 1.0
    coarse_weight: float = 1.0
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.pca_scope not in ("local", "global"):
            raise ValueError(f"pca_scope={self.pca_scope!r}; choose 'local' (the reference) or 'global'.")
        self._warned = False

    def __call__(
        self,
        image_features: torch.Tensor,
        long_text_features: torch.Tensor,
        short_text_features: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Losses from the local batch's features (each [B, D], L2-normalised); `loss` is the weighted sum."""
        all_images = gather_with_grad(image_features)
        fine = contrastive_loss(
            image_features,
            long_text_features,
            all_images,
            gather_with_grad(long_text_features),
            logit_scale,
            self.label_smoothing,
        )

        if self.pca_scope == "local":  # the reference: PCA of this process's batch
            self._warn_if_pca_is_identity(image_features.shape[0])
            reduced_local = pca_reconstruct(image_features, self.pca_components)
            reduced_all = gather_with_grad(reduced_local)
        else:  # PCA of the global batch, then this process's rows
            self._warn_if_pca_is_identity(all_images.shape[0])
            reduced_all = pca_reconstruct(all_images, self.pca_components)
            local = image_features.shape[0]
            reduced_local = reduced_all[_rank() * local : (_rank() + 1) * local]
        coarse = contrastive_loss(
            reduced_local,
            short_text_features,
            reduced_all,
            gather_with_grad(short_text_features),
            logit_scale,
            self.label_smoothing,
        )
        loss = self.fine_weight * fine + self.coarse_weight * coarse
        return {"loss": loss, "fine_loss": fine.detach(), "coarse_loss": coarse.detach()}

    def _warn_if_pca_is_identity(self, batch: int) -> None:
        if batch <= self.pca_components + 1 and not self._warned:
            self._warned = True
            warnings.warn(
                f"PCA runs over {batch} samples with {self.pca_components} components: the reconstruction is "
                "exact, so the coarse-grained loss becomes a plain short-caption loss. Use a larger per-PCA batch "
                "(per-device batch, or --pca-scope global) or fewer --pca-components.",
                stacklevel=3,
            )
