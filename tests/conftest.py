"""Shared fixtures.

Nothing here reaches a model hub: checkpoints are built locally, in the real layouts, with random weights.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# diffusers writes the custom-pipeline code it loads (trust_remote_code) into HF_MODULES_CACHE, by default one folder
# in the home shared by every test process (both xdist workers, other runs): a folder of this process's own instead.
# Set before diffusers is imported, which reads it once.
if "HF_MODULES_CACHE" not in os.environ:
    os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="longclip-tests-modules-")
    atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)

# Under pytest-xdist (on by default: pyproject's addopts) each worker gets its share of the cores, and so do the
# processes its tests start (they inherit the variable): workers each using every core only fight over them. Set
# before torch is imported, which reads it once.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

import pytest  # noqa: E402
from helpers.common import published_longclip_state_dict  # noqa: E402

# The Hub is unreachable here; huggingface_hub reads this once, at import, so set it before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"

# The files that take minutes (`--durations`), started first, longest first, so that in a parallel run none of them
# is left running alone at the end while the other worker idles (xdist then keeps this order: --no-loadscope-reorder).
STARTED_FIRST = (
    "tests/test_readme.py",
    "tests/training/",
    "tests/demo/test_browser.py",
    "tests/comfyui/test_real_engine.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Moves the files of STARTED_FIRST to the front; every file keeps the order of its own tests."""

    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(STARTED_FIRST) if item.nodeid.startswith(prefix)), len(STARTED_FIRST))

    items.sort(key=rank)


@pytest.fixture(scope="session")
def published_pt(tmp_path_factory):
    """(path to a published-layout Long-CLIP .pt, the open_clip model computing the same function)."""
    import torch

    state_dict, model = published_longclip_state_dict()
    path = tmp_path_factory.mktemp("published") / "longclip-tiny.pt"
    torch.save(state_dict, path)
    return path, model


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    """The output of `longclip tiny` (built once per test session)."""
    from longclip_diffusers.tiny import write_tiny_components

    return write_tiny_components(tmp_path_factory.mktemp("tiny") / "components")


@pytest.fixture(scope="session")
def long_parts(tiny_components):
    """Loads (text encoder, tokenizer) of the tiny Long-CLIP for "sd15", "sdxl", "sd2", "sd3" or "flux"."""
    from longclip_diffusers import LongCLIPTextEncoder, LongCLIPTokenizer

    def load(base: str):
        folder = tiny_components / f"longclip-{base}"
        return LongCLIPTextEncoder.from_pretrained(folder), LongCLIPTokenizer.from_pretrained(folder)

    return load
