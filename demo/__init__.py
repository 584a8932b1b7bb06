"""The Gradio demo: vanilla CLIP and Long-CLIP side by side on the same seed (`longclip demo`)."""
