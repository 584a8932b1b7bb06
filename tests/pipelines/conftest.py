"""Pipelines shared by the pipeline tests, built once per session: the tiny stock pipeline of each family and its
Long-CLIP counterpart (the tiny Long-CLIP of `longclip tiny` in place of CLIP-L)."""

from __future__ import annotations

import functools

import diffusers
import pytest

import longclip_diffusers.pipelines as long_pipelines
from longclip_diffusers.families import FAMILIES


@pytest.fixture(scope="session")
def stock_pipeline(tiny_components):
    """Loads (once) the tiny stock text-to-image pipeline of a family: `stock_pipeline("sdxl")`."""

    @functools.cache
    def load(key: str):
        return getattr(diffusers, FAMILIES[key].stock_pipeline).from_pretrained(tiny_components / key)

    return load


@pytest.fixture(scope="session")
def long_pipeline(stock_pipeline, long_parts):
    """Builds (once) a family's Long-CLIP text-to-image pipeline with the tiny Long-CLIP: `long_pipeline("sdxl")`."""

    @functools.cache
    def build(key: str):
        text_encoder, tokenizer = long_parts(key)
        long_class = getattr(long_pipelines, FAMILIES[key].long_pipeline)
        return long_class.from_pipe(stock_pipeline(key), text_encoder=text_encoder, tokenizer=tokenizer)

    return build
