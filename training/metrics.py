"""The scores of `longclip eval`: retrieval recall@k and zero-shot top-k accuracy, in percent, from features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

RETRIEVAL_KS = (1, 5, 10)
ZERO_SHOT_KS = (1, 5)


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    image_of_caption: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict[str, float]:
    """Recall@k in percent, by cosine similarity: `i2t_R@k` and `t2i_R@k` for each k.

    Image to text: a hit when any caption of the image is among the k best; text to image: when its image is.
    A query's rank counts the candidates scoring strictly higher than its best true match, so ties (e.g. the
    same caption text under two images) do not count against it.
    """
    images = F.normalize(image_features.detach().float().cpu(), dim=-1)
    texts = F.normalize(text_features.detach().float().cpu(), dim=-1)
    owners = torch.as_tensor(image_of_caption, dtype=torch.long).cpu()
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(f"Expected [N, d] features of one width, got {tuple(images.shape)} and {tuple(texts.shape)}.")
    if owners.shape != (texts.shape[0],) or owners.min() < 0 or owners.max() >= images.shape[0]:
        raise ValueError(
            f"image_of_caption needs one index in 0..{images.shape[0] - 1} per caption ({texts.shape[0]})."
        )
    if any(k < 1 for k in ks):
        raise ValueError(f"Every k must be at least 1, got {tuple(ks)}.")

    chunk = max(1, 2**24 // max(images.shape[0], texts.shape[0]))  # bounds the similarity block to 64 MB
    i2t_rank = torch.empty(images.shape[0], dtype=torch.long)
    for start in range(0, images.shape[0], chunk):
        similarity = images[start : start + chunk] @ texts.T
        rows = torch.arange(start, start + similarity.shape[0]).unsqueeze(1)
        best_true = similarity.masked_fill(owners.unsqueeze(0) != rows, float("-inf")).amax(dim=1, keepdim=True)
        i2t_rank[start : start + chunk] = (similarity > best_true).sum(dim=1)
    t2i_rank = torch.empty(texts.shape[0], dtype=torch.long)
    for start in range(0, texts.shape[0], chunk):
        similarity = texts[start : start + chunk] @ images.T
        true = similarity.gather(1, owners[start : start + chunk].unsqueeze(1))
        t2i_rank[start : start + chunk] = (similarity > true).sum(dim=1)

    metrics = {f"i2t_R@{k}": 100.0 * int((i2t_rank < k).sum()) / len(i2t_rank) for k in ks}
    metrics.update({f"t2i_R@{k}": 100.0 * int((t2i_rank < k).sum()) / len(t2i_rank) for k in ks})
    return metrics


# ----------------------------------------------------------------------------------------------------------


def top_k_accuracy(scores: torch.Tensor, labels: Sequence[int], ks: Sequence[int] = ZERO_SHOT_KS) -> dict[str, float]:
    """Top-k accuracy in percent (`top1`, `top5`) of [images, classes] scores; k is capped at the class count."""
    labels = torch.as_tensor(labels).unsqueeze(1)
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    return {f"top{k}": 100.0 * int((top[:, :k] == labels).any(dim=1).sum()) / len(labels) for k in ks}
