"""Long-CLIP pipelines (filled in by its own issue; see the README)."""
