"""`longclip comfy-export`: the custom-node package, the text encoder files ComfyUI loads, and bad inputs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from comfy_fakes import LONG

from longclip_diffusers import load_checkpoint
from longclip_diffusers.comfy_export import (
    NODE_PACKAGE,
    add_comfy_export_arguments,
    encoder_file_name,
    export_comfyui,
    run_comfy_export,
)
from longclip_diffusers.comfyui import NODE_CLASS_MAPPINGS, LongCLIPLoader, LongCLIPTextEncode
from longclip_diffusers.formats import safetensors_shapes

# Outputs of the ComfyUI core nodes the example workflows use (nodes.py), to check the links into our nodes.
CORE_OUTPUTS = {
    "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
    "EmptyLatentImage": ("LATENT",),
    "KSampler": ("LATENT",),
    "VAEDecode": ("IMAGE",),
    "SaveImage": (),
}


def comfyui_text_encoder_kind(path) -> tuple[str | None, int]:
    """What ComfyUI core reads from a text encoder file: its model kind (comfy.sd.detect_te_model) and the
    position rows that make it switch to Long-CLIP (comfy.text_encoders.long_clipl, 248)."""
    shapes = safetensors_shapes(path)
    kind = None
    for key, name in (("layers.30", "clip_g"), ("layers.22", "clip_h"), ("layers.0", "clip_l")):
        if f"text_model.encoder.{key}.mlp.fc1.weight" in shapes:
            kind = name
            break
    return kind, shapes.get("text_model.embeddings.position_embedding.weight", [0])[0]


def output_types(class_type: str) -> tuple[str, ...]:
    node_class = NODE_CLASS_MAPPINGS.get(class_type)
    return node_class.RETURN_TYPES if node_class else CORE_OUTPUTS[class_type]


def safetensors_dtypes(path) -> set[str]:
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    return {entry["dtype"] for key, entry in header.items() if key != "__metadata__"}


@pytest.fixture(scope="module")
def exported(tiny_components, published_pt, tmp_path_factory):
    out = tmp_path_factory.mktemp("comfy") / "ComfyUI"
    encoders = [published_pt[0], tiny_components / "longclip-sd15", tiny_components / "sdxl" / "text_encoder_2"]
    assert export_comfyui(out, encoders) == out
    return out


def test_the_layout(exported):
    package = exported / "custom_nodes" / NODE_PACKAGE
    assert sorted(path.name for path in package.iterdir()) == [
        "README.md",
        "__init__.py",
        "pyproject.toml",
        "requirements.txt",
        "workflows",
    ]
    files = sorted(path.name for path in (exported / "models" / "text_encoders").iterdir())
    assert files == ["longclip-sd15.safetensors", "longclip-tiny.safetensors", "sdxl-text_encoder_2.safetensors"]
    assert sorted(path.name for path in exported.iterdir()) == ["custom_nodes", "models"]  # no leftovers


def test_the_encoders_are_what_comfyui_core_loads_as_long_clip(exported, published_pt, tiny_components):
    folder = exported / "models" / "text_encoders"
    for name, source in (("longclip-tiny", published_pt[0]), ("longclip-sd15", tiny_components / "longclip-sd15")):
        path = folder / f"{name}.safetensors"
        assert comfyui_text_encoder_kind(path) == ("clip_l", 248)
        shapes = safetensors_shapes(path)
        assert all(key.startswith("text_model.") or key == "text_projection.weight" for key in shapes)
        expected = {key: list(value.shape) for key, value in load_checkpoint(source).state_dict.items()}
        assert all(shapes[key] == expected[key] for key in shapes)
        assert safetensors_dtypes(path) == {"F32"}
    assert comfyui_text_encoder_kind(folder / "sdxl-text_encoder_2.safetensors") == ("clip_l", 77)  # tiny: 5 layers
    assert "text_projection.weight" in safetensors_shapes(folder / "sdxl-text_encoder_2.safetensors")


def test_the_loader_reads_an_exported_file_back(exported, published_pt):
    exported_file = exported / "models" / "text_encoders" / "longclip-tiny.safetensors"
    conditioning = []
    for source in (exported_file, published_pt[0]):
        (long_clip,) = LongCLIPLoader().load(str(source), "clip_l")
        conditioning.append(LongCLIPTextEncode().encode(long_clip, LONG)[0][0])
    (cond, extras), (expected, expected_extras) = conditioning
    assert cond.shape == (1, 2 * 248, 128) and torch.equal(cond, expected)
    assert torch.equal(extras["pooled_output"], expected_extras["pooled_output"])  # Long-CLIP-L's projection


def test_the_package_imports_as_comfyui_imports_it(exported):
    custom_nodes = exported / "custom_nodes"
    code = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        sys.path.insert(0, {str(custom_nodes)!r})
        import {NODE_PACKAGE} as package
        # ComfyUI's loader: the folder's __init__.py, imported under the folder's name
        init = {str(custom_nodes / NODE_PACKAGE / "__init__.py")!r}
        spec = importlib.util.spec_from_file_location({NODE_PACKAGE!r}, init)
        module = importlib.util.module_from_spec(spec)
        sys.modules[{NODE_PACKAGE!r}] = module
        spec.loader.exec_module(module)
        print(json.dumps({{
            "classes": sorted(module.NODE_CLASS_MAPPINGS),
            "names": module.NODE_DISPLAY_NAME_MAPPINGS,
            "same": module.NODE_CLASS_MAPPINGS == package.NODE_CLASS_MAPPINGS,
            "library": sys.modules["longclip_diffusers.comfyui"].NODE_CLASS_MAPPINGS is module.NODE_CLASS_MAPPINGS,
            "comfyui_imported": sorted(m for m in sys.modules if m == "folder_paths" or m.split(".")[0] == "comfy"),
        }}))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["classes"] == sorted(NODE_CLASS_MAPPINGS)
    assert set(report["names"]) == set(NODE_CLASS_MAPPINGS)
    assert report["same"] and report["library"]  # a shim: one implementation, in the installed library
    assert report["comfyui_imported"] == []


def test_the_shim_says_how_to_install_the_library(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "longclip_diffusers.comfyui", None)  # as if longclip-diffusers were missing
    init = exported / "custom_nodes" / NODE_PACKAGE / "__init__.py"
    spec = importlib.util.spec_from_file_location("shim_without_library", init)
    with pytest.raises(ImportError, match="pip install -U longclip-diffusers"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_registry_metadata(exported):
    package = exported / "custom_nodes" / NODE_PACKAGE
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    metadata = tomllib.loads((package / "pyproject.toml").read_text())
    assert metadata["project"]["name"] and metadata["project"]["version"]
    assert any(dependency.startswith("longclip-diffusers") for dependency in metadata["project"]["dependencies"])
    assert {"PublisherId", "DisplayName", "Icon"} <= set(metadata["tool"]["comfy"])
    assert (package / "requirements.txt").read_text().startswith("longclip-diffusers")


@pytest.mark.parametrize("workflow", ["longclip_sdxl_api.json", "longclip_sd15_api.json"])
def test_the_example_workflows_fit_the_nodes(exported, workflow):
    package = exported / "custom_nodes" / NODE_PACKAGE
    nodes = json.loads((package / "workflows" / workflow).read_text())
    for node_id, node in nodes.items():
        if node["class_type"] in NODE_CLASS_MAPPINGS:
            node_class = NODE_CLASS_MAPPINGS[node["class_type"]]
            schema = node_class.INPUT_TYPES()
            declared = {**schema["required"], **schema.get("optional", {})}
            assert set(schema["required"]) <= set(node["inputs"]) <= set(declared), node_id
            for name, value in node["inputs"].items():
                kind, options = declared[name]
                if isinstance(value, list):  # a link: [source node, output index]
                    source, index = value
                    assert kind == output_types(nodes[source]["class_type"])[index], (node_id, name)
                elif isinstance(kind, list) and kind:
                    assert value in kind, (node_id, name)
                elif "min" in options:
                    assert options["min"] <= value <= options["max"], (node_id, name)
    assert nodes["2"]["inputs"]["text_encoder"] == "longclip-tiny.safetensors"  # the first Long-CLIP-L exported
    if workflow == "longclip_sdxl_api.json":
        readme = (package / "README.md").read_text()
        block = readme.split("```json\n", 1)[1].split("```", 1)[0]
        assert json.loads(block) == nodes


def test_command_arguments_and_summary(tiny_components, tmp_path):
    parser = argparse.ArgumentParser(prog="longclip comfy-export")
    add_comfy_export_arguments(parser)
    args = parser.parse_args(
        [str(tmp_path / "out"), "--encoder", str(tiny_components / "longclip-sdxl"), "--dtype", "fp16"]
    )
    summary = run_comfy_export(args)
    assert len(summary.splitlines()) == 1 and "longclip-sdxl.safetensors" in summary and NODE_PACKAGE in summary
    path = tmp_path / "out" / "models" / "text_encoders" / "longclip-sdxl.safetensors"
    assert safetensors_dtypes(path) == {"F16"} and comfyui_text_encoder_kind(path) == ("clip_l", 248)
    assert parser.parse_args([str(tmp_path)]).encoder == []


def test_without_encoders_only_the_package_is_written(tmp_path):
    export_comfyui(tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["custom_nodes"]


def test_a_missing_encoder_is_a_clear_error_and_nothing_is_written(tiny_components, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors: no such file or folder"):
        export_comfyui(tmp_path / "new", [tiny_components / "longclip-sd15", tmp_path / "missing.safetensors"])
    assert not (tmp_path / "new").exists()
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "models").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        export_comfyui(comfyui, [tmp_path / "missing.safetensors"])
    assert sorted(path.name for path in comfyui.iterdir()) == ["models"]  # an existing folder is left as it was
    assert list((comfyui / "models").iterdir()) == []


def test_existing_outputs_need_overwrite_and_other_files_stay(tiny_components, tmp_path):
    comfyui = tmp_path / "ComfyUI"
    other = comfyui / "models" / "text_encoders" / "clip_l.safetensors"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"not ours")
    source = tiny_components / "longclip-sd15"
    export_comfyui(comfyui, [source])
    with pytest.raises(FileExistsError, match="already exists; choose another output or pass --overwrite"):
        export_comfyui(comfyui, [source])
    export_comfyui(comfyui, [source], overwrite=True)
    assert other.read_bytes() == b"not ours"
    assert sorted(path.name for path in comfyui.iterdir()) == ["custom_nodes", "models"]
    assert sorted(path.name for path in other.parent.iterdir()) == ["clip_l.safetensors", "longclip-sd15.safetensors"]


def test_encoder_names_and_clashes(tiny_components, tmp_path):
    assert encoder_file_name("BeichenZhang/LongCLIP-L") == "LongCLIP-L.safetensors"
    assert encoder_file_name("/models/longclip-L.pt") == "longclip-L.safetensors"
    assert encoder_file_name("/models/sdxl/text_encoder_2/") == "sdxl-text_encoder_2.safetensors"
    assert encoder_file_name(tiny_components / "longclip-sd15/text_encoder/model.safetensors") == (
        "longclip-sd15-text_encoder.safetensors"
    )
    assert encoder_file_name("/models/LongCLIP-L/model.safetensors") == "LongCLIP-L.safetensors"
    with pytest.raises(ValueError, match="Several encoders would be written as longclip-sd15.safetensors"):
        export_comfyui(tmp_path / "out", [tiny_components / "longclip-sd15", tiny_components / "longclip-sd15"])
    with pytest.raises(ValueError, match="Unknown dtype 'fp8'"):
        export_comfyui(tmp_path / "out", [], dtype="fp8")
    assert not (tmp_path / "out").exists()
