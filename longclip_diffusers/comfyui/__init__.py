"""ComfyUI nodes for Long-CLIP: the custom-node package `longclip comfy-export` writes is a shim over this one.

```python
from longclip_diffusers.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
```

Imports nothing from ComfyUI; inside ComfyUI the nodes read its model folders, devices and dtypes (`host`).
"""

from .conditioning import encode_sd, encode_sdxl
from .encoders import CLIP_TYPES, LongCLIP, load_long_clip, long_clip_from_comfy_clip
from .nodes import (
    CATEGORY,
    LONGCLIP,
    NODE_CLASS_MAPPINGS,
    NODE_DISPLAY_NAME_MAPPINGS,
    LongCLIPLoader,
    LongCLIPStretch,
    LongCLIPTextEncode,
    LongCLIPTextEncodeSDXL,
)

__all__ = [
    "CATEGORY",
    "CLIP_TYPES",
    "LONGCLIP",
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "LongCLIP",
    "LongCLIPLoader",
    "LongCLIPStretch",
    "LongCLIPTextEncode",
    "LongCLIPTextEncodeSDXL",
    "encode_sd",
    "encode_sdxl",
    "load_long_clip",
    "long_clip_from_comfy_clip",
]
