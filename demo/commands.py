"""`longclip demo`, the demo's command (registered in pyproject.toml's `longclip.commands` entry points)."""

from __future__ import annotations

from longclip_diffusers.commands import Command

from .app import add_demo_arguments, run_demo

DEMO = Command("demo", "the Gradio app: vanilla CLIP | Long-CLIP, same seed", add_demo_arguments, run_demo)
