"""Long-CLIP text encoders for Stable Diffusion: 248-token CLIP, drop-in for diffusers pipelines.

```python
from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer

text_encoder = LongCLIPTextEncoder.from_pretrained("BeichenZhang/LongCLIP-L")  # a stock CLIPTextModel
tokenizer = LongCLIPTokenizer.from_pretrained("BeichenZhang/LongCLIP-L")      # CLIP's BPE, 248 tokens
```
"""

from .checkpoint import Checkpoint, CheckpointError
from .convert import convert, stretch_checkpoint
from .formats import load_checkpoint
from .stretch import stretch_model, stretch_position_table, stretch_state_dict, stretched_length
from .text_encoder import LongCLIPTextEncoder
from .tokenizer import LongCLIPTokenizer, check_pair, clean_text

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "LongCLIPTextEncoder",
    "LongCLIPTokenizer",
    "check_pair",
    "clean_text",
    "convert",
    "load_checkpoint",
    "stretch_checkpoint",
    "stretch_model",
    "stretch_position_table",
    "stretch_state_dict",
    "stretched_length",
]
