"""Long-CLIP training (filled in by its own issue; see the README)."""
