"""Every diffusers pipeline class of the five families has a Long-CLIP counterpart or a one-line reason in the
README; the README's table lists exactly the classes covered."""

import inspect
import re

import diffusers
import pytest
from diffusers import DiffusionPipeline
from helpers.pipelines import README

from longclip_diffusers.families import FAMILIES
from longclip_diffusers.pipelines import covered_classes, long_clip_class, with_long_prompts


def text_encoders(cls: type) -> tuple:
    """The text-encoder components of a pipeline class and their types, as its `__init__` declares them."""
    parameters = inspect.signature(cls.__init__).parameters
    return tuple((name, str(p.annotation)) for name, p in parameters.items() if name.startswith("text_encoder"))


def family_classes() -> list[str]:
    """diffusers' pipeline classes whose text encoders are those of one of the families' text-to-image classes."""
    signatures = {text_encoders(getattr(diffusers, family.stock_pipeline)) for family in FAMILIES.values()}
    found = []
    for name in dir(diffusers):
        if not name.endswith("Pipeline"):
            continue
        cls = getattr(diffusers, name)
        if inspect.isclass(cls) and issubclass(cls, DiffusionPipeline) and text_encoders(cls) in signatures:
            found.append(name)
    return found


def test_every_class_of_the_families_is_covered_or_has_a_reason_in_the_readme():
    readme = README.read_text(encoding="utf-8")
    reasons = set(re.findall(r"^- `(\w+Pipeline)`(?:, `\w+Pipeline`)*:", readme, re.MULTILINE))
    reasons |= {name for line in re.findall(r"^- (`\w+Pipeline`(?:, `\w+Pipeline`)*):", readme, re.MULTILINE)
                for name in re.findall(r"`(\w+)`", line)}  # fmt: skip
    covered = set(covered_classes())
    missing = [name for name in family_classes() if name not in covered and name not in reasons]
    assert not missing, f"no Long-CLIP counterpart and no reason in the README: {missing}"
    assert not covered & reasons
    rows = re.findall(r"^\| [^|]+ \| (.+) \|$", readme, re.MULTILINE)
    table = {name for row in rows for name in re.findall(r"`(\w+Pipeline)`", row)}
    assert covered <= table and len(covered) >= 74


@pytest.mark.parametrize("name", sorted(covered_classes()))
def test_each_counterpart_subclasses_its_stock_class_and_takes_its_arguments(name):
    stock = getattr(diffusers, name)
    ours = long_clip_class(stock)
    assert issubclass(ours, stock) and ours.__name__ == f"LongCLIP{name}"
    stock_parameters = inspect.signature(stock.__init__).parameters
    assert list(inspect.signature(ours.__init__).parameters)[: len(stock_parameters)] == list(stock_parameters)
    assert "prompt_weighting" in inspect.signature(ours.__init__).parameters


def test_an_unsupported_pipeline_gets_one_line_naming_it_and_what_is_covered(stock_pipeline):
    instruct = diffusers.StableDiffusionInstructPix2PixPipeline
    one_line = r"^StableDiffusionInstructPix2PixPipeline has no Long-CLIP counterpart: [^\n]*SDXL[^\n]*$"
    with pytest.raises(ValueError, match=one_line):
        long_clip_class(instruct)
    stock = stock_pipeline("sd15")
    with pytest.raises(ValueError, match="StableDiffusionInstructPix2PixPipeline has no Long-CLIP counterpart"):
        with_long_prompts(instruct.from_pipe(stock))
