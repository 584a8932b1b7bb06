"""Long-CLIP demo (filled in by its own issue; see the README)."""
