"""One Long-CLIP loss + backward on a fixed global batch of 8, split over however many processes run it.

    python ddp_step.py OUT.pt                                   # 1 process
    python -m torch.distributed.run --nproc_per_node 2 ddp_step.py OUT.pt   # 2 processes (gloo on the CPU)

Writes the mean loss and every parameter's gradient (after DDP's all-reduce) from rank 0.
"""

import sys

import torch
from accelerate import Accelerator
from open_clip.model import CLIP

from longclip_diffusers.stretch import stretch_model
from longclip_diffusers.training.loss import LongCLIPLoss

CONFIG = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
GLOBAL_BATCH = 8


def captions(generator: torch.Generator, lengths: list[int]) -> torch.Tensor:
    ids = torch.zeros(len(lengths), 248, dtype=torch.long)  # open_clip pads with 0
    for row, length in zip(ids, lengths, strict=True):
        row[:length] = torch.randint(1, 49406, (length,), generator=generator)
        row[0], row[length - 1] = 49406, 49407
    return ids


def main(out: str) -> None:
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = stretch_model(CLIP(**CONFIG))
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator)
    long_text = captions(generator, [200, 150, 240, 90, 180, 120, 210, 160])
    short_text = captions(generator, [12, 20, 9, 25, 15, 18, 11, 22])

    local = GLOBAL_BATCH // accelerator.num_processes
    rows = slice(accelerator.process_index * local, (accelerator.process_index + 1) * local)
    model = accelerator.prepare(model)
    texts = torch.cat([long_text[rows], short_text[rows]])
    image_features, text_features, logit_scale = model(images[rows], texts)[:3]
    losses = LongCLIPLoss(pca_components=4, pca_scope="global")(image_features, *text_features.chunk(2), logit_scale)
    accelerator.backward(losses["loss"])
    mean_loss = accelerator.reduce(losses["loss"].detach(), reduction="mean")
    if accelerator.is_main_process:
        grads = {name: p.grad.clone() for name, p in accelerator.unwrap_model(model).named_parameters()}
        torch.save({"loss": mean_loss, "grads": grads, "processes": accelerator.num_processes}, out)


if __name__ == "__main__":
    main(sys.argv[1])
