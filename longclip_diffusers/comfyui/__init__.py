"""ComfyUI nodes for Long-CLIP: the custom-node package `longclip comfy-export` writes is a shim over this one.

```python
from longclip_diffusers.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
```

Imports nothing from ComfyUI; inside ComfyUI the nodes read its model folders, devices and dtypes (`host`).
"""

from .conditioning import encode_flux, encode_sd, encode_sd3, encode_sdxl
from .encoders import CLIP_TYPES, LongCLIP, load_long_clip, long_clip_from_comfy_clip
from .nodes import (
    CATEGORY,
    LONGCLIP,
    LONGCLIP_T5,
    NODE_CLASS_MAPPINGS,
    NODE_DISPLAY_NAME_MAPPINGS,
    LongCLIPCheckpointLoader,
    LongCLIPLoader,
    LongCLIPStretch,
    LongCLIPT5FromCLIP,
    LongCLIPTextEncode,
    LongCLIPTextEncodeFlux,
    LongCLIPTextEncodeSD3,
    LongCLIPTextEncodeSDXL,
)
from .t5 import T5, ComfyT5, t5_from_comfy_clip

__all__ = [
    "CATEGORY",
    "CLIP_TYPES",
    "ComfyT5",
    "LONGCLIP",
    "LONGCLIP_T5",
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "LongCLIP",
    "LongCLIPCheckpointLoader",
    "LongCLIPLoader",
    "LongCLIPStretch",
    "LongCLIPT5FromCLIP",
    "LongCLIPTextEncode",
    "LongCLIPTextEncodeFlux",
    "LongCLIPTextEncodeSD3",
    "LongCLIPTextEncodeSDXL",
    "T5",
    "encode_flux",
    "encode_sd",
    "encode_sd3",
    "encode_sdxl",
    "load_long_clip",
    "long_clip_from_comfy_clip",
    "t5_from_comfy_clip",
]
