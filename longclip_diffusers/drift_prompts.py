"""The built-in prompt set of `longclip drift`: 240 varied, short Stable Diffusion prompts (5 to 75 CLIP tokens).

Prompts are put together from subjects, scenes, lighting, styles and details, in a fixed order, so the set is the
same everywhere and covers every length from a few words to almost a full 77-token window.
"""

from __future__ import annotations

_SUBJECTS = (
    "a red fox",
    "an old fisherman with a grey beard",
    "a golden retriever puppy",
    "a futuristic city skyline",
    "a bowl of ramen",
    "a medieval castle on a cliff",
    "a young woman in a yellow raincoat",
    "a vintage motorcycle",
    "a snow leopard",
    "a cozy reading nook",
    "an astronaut floating in space",
    "a field of sunflowers",
    "a steam locomotive",
    "a portrait of a samurai",
    "a tiny robot made of brass",
    "a lighthouse in a storm",
    "two children flying a kite",
    "a glass of iced coffee",
    "a dragon sleeping on gold coins",
    "a mountain lake at dawn",
    "a street market in Marrakesh",
    "a ballet dancer mid-leap",
    "a Victorian greenhouse full of ferns",
    "a black cat on a windowsill",
    "a sailing ship on rough seas",
    "a chef plating a dessert",
    "an abandoned amusement park",
    "a hummingbird drinking nectar",
    "a knight in dented armour",
    "a neon-lit noodle bar",
    "a desert caravan of camels",
    "a stack of old leather books",
    "an elderly couple dancing in the kitchen",
    "a coral reef with clownfish",
    "a wooden cabin in a pine forest",
    "a jazz trio on a small stage",
    "a bullet train crossing a bridge",
    "a violin on a velvet chair",
    "a owl perched on a branch",
    "a hot air balloon over vineyards",
)
_SCENES = (
    "in a misty forest",
    "on a busy city street",
    "at the edge of a frozen lake",
    "inside a sunlit kitchen",
    "under a starry night sky",
    "on a rainy afternoon",
    "in the middle of a wheat field",
    "beside a crumbling stone wall",
    "on a beach at low tide",
    "in a cluttered workshop",
    "on top of a skyscraper",
    "in a quiet library",
)
_LIGHT = (
    "golden hour light",
    "soft overcast light",
    "dramatic rim lighting",
    "neon reflections on wet pavement",
    "candlelight",
    "harsh midday sun",
    "blue hour glow",
    "volumetric fog and light rays",
)
_STYLES = (
    "photorealistic",
    "oil painting",
    "watercolor illustration",
    "35mm film photograph",
    "studio Ghibli style",
    "digital concept art",
    "charcoal sketch",
    "isometric 3D render",
    "ukiyo-e woodblock print",
    "art nouveau poster",
)
_DETAILS = (
    "highly detailed",
    "shallow depth of field",
    "wide angle lens",
    "muted earth tones with a single splash of red",
    "intricate textures on every surface",
    "symmetrical composition",
    "with a long shadow stretching across the ground",
    "rendered in 8k with sharp focus",
    "a sense of calm and solitude",
    "vivid saturated colors",
    "fine grain and subtle vignette",
    "seen from a low angle looking up",
    "with small birds circling in the background",
    "award-winning photograph",
    "a gentle breeze moving the leaves and her hair",
    "the whole scene reflected in a puddle in the foreground",
)


def _prompt(index: int) -> str:
    """Prompt `index`: a subject in a scene, then up to seven more parts (each subject gets every length)."""
    parts = [_SUBJECTS[index % len(_SUBJECTS)] + " " + _SCENES[index % len(_SCENES)]]
    extra = 1 + (index + index // len(_SUBJECTS)) % 9  # 1..9 parts: lengths from 5 tokens to about 70
    if extra >= 2:
        parts.append(_STYLES[index % len(_STYLES)])
    if extra >= 3:
        parts.append(_LIGHT[index % len(_LIGHT)])
    for step in range(extra - 3):
        parts.append(_DETAILS[(index + 5 * step) % len(_DETAILS)])
    return ", ".join(parts)


DRIFT_PROMPTS: tuple[str, ...] = tuple(_prompt(index) for index in range(240))
