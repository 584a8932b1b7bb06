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
from helpers.comfy_fakes import LONG, openai_like_config
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from longclip_diffusers import CheckpointError, convert, load_checkpoint
from longclip_diffusers.cli import main
from longclip_diffusers.comfy_export import (
    NODE_PACKAGE,
    add_comfy_export_arguments,
    encoder_file_name,
    export_comfyui,
    run_comfy_export,
)
from longclip_diffusers.comfyui import NODE_CLASS_MAPPINGS, LongCLIPLoader, LongCLIPTextEncode
from longclip_diffusers.tiny import tiny_text_config
from longclip_diffusers.weights_files import safetensors_shapes

# Outputs and linked inputs of the ComfyUI core nodes the example workflows use (nodes.py, comfy_extras/nodes_sd3.py),
# to check every link of the graphs.
CORE_OUTPUTS = {
    "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
    "UNETLoader": ("MODEL",),
    "CLIPLoader": ("CLIP",),
    "VAELoader": ("VAE",),
    "EmptyLatentImage": ("LATENT",),
    "EmptySD3LatentImage": ("LATENT",),
    "ConditioningZeroOut": ("CONDITIONING",),
    "KSampler": ("LATENT",),
    "VAEDecode": ("IMAGE",),
    "SaveImage": (),
}
CORE_LINKED_INPUTS = {
    "ConditioningZeroOut": {"conditioning": "CONDITIONING"},
    "KSampler": {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT"},
    "VAEDecode": {"samples": "LATENT", "vae": "VAE"},
    "SaveImage": {"images": "IMAGE"},
}
WORKFLOWS = ["longclip_sdxl_api.json", "longclip_sd15_api.json", "longclip_sd3_api.json", "longclip_flux_api.json"]


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
def sources(tmp_path_factory):
    """Encoders the Load Long-CLIP node reads back from a weights-only file as they are (OpenAI's 64-wide heads),
    laid out as `longclip tiny` lays out its own: 77-position `sd15/text_encoder` and `sdxl/text_encoder`, a
    bigG stand-in with its projection `sdxl/text_encoder_2`, and their Long-CLIP-Ls `longclip-sd15|sdxl/`."""
    folder = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    CLIPTextModel(openai_like_config(64)).save_pretrained(folder / "sd15" / "text_encoder")
    CLIPTextModel(openai_like_config(64)).save_pretrained(folder / "sdxl" / "text_encoder")
    CLIPTextModelWithProjection(openai_like_config(64)).save_pretrained(folder / "sdxl" / "text_encoder_2")
    for base in ("sd15", "sdxl"):
        convert(folder / base / "text_encoder", folder / f"longclip-{base}", stretch=(20, 4))
    return folder


@pytest.fixture(scope="module")
def exported(sources, published_pt, tmp_path_factory):
    out = tmp_path_factory.mktemp("comfy") / "ComfyUI"
    encoders = [published_pt[0], sources / "longclip-sd15", sources / "sdxl" / "text_encoder_2"]
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


def test_the_encoders_are_what_comfyui_core_loads_as_long_clip(exported, published_pt, sources):
    folder = exported / "models" / "text_encoders"
    for name, source in (("longclip-tiny", published_pt[0]), ("longclip-sd15", sources / "longclip-sd15")):
        path = folder / f"{name}.safetensors"
        assert comfyui_text_encoder_kind(path) == ("clip_l", 248)
        shapes = safetensors_shapes(path)
        assert all(key.startswith("text_model.") or key == "text_projection.weight" for key in shapes)
        expected = {key: list(value.shape) for key, value in load_checkpoint(source).state_dict.items()}
        assert all(shapes[key] == expected[key] for key in shapes)
        assert safetensors_dtypes(path) == {"F32"}
    assert comfyui_text_encoder_kind(folder / "sdxl-text_encoder_2.safetensors") == ("clip_l", 77)  # tiny: 3 layers
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


def test_the_package_holds_a_workflow_for_every_family(exported):
    package = exported / "custom_nodes" / NODE_PACKAGE
    assert sorted(path.name for path in (package / "workflows").iterdir()) == sorted(WORKFLOWS)


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_the_example_workflows_fit_the_nodes(exported, workflow):
    package = exported / "custom_nodes" / NODE_PACKAGE
    nodes = json.loads((package / "workflows" / workflow).read_text())
    for node_id, node in nodes.items():
        for name, kind in CORE_LINKED_INPUTS.get(node["class_type"], {}).items():
            source, index = node["inputs"][name]
            assert output_types(nodes[source]["class_type"])[index] == kind, (node_id, name)
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
    assert nodes["9"]["class_type"] == "SaveImage" and nodes["9"]["inputs"]["images"] == ["8", 0]
    encoders = {node["class_type"] for node in nodes.values() if node["class_type"].startswith("LongCLIPTextEncode")}
    family = workflow.split("_")[1]
    suffix = {"sd15": "", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}[family]
    assert encoders == {f"LongCLIPTextEncode{suffix}"}
    if workflow == "longclip_sdxl_api.json":
        readme = (package / "README.md").read_text()
        block = readme.split("```json\n", 1)[1].split("```", 1)[0]
        assert json.loads(block) == nodes


def test_command_arguments_and_summary(sources, tmp_path):
    parser = argparse.ArgumentParser(prog="longclip comfy-export")
    add_comfy_export_arguments(parser)
    args = parser.parse_args([str(tmp_path / "out"), "--encoder", str(sources / "longclip-sdxl"), "--dtype", "fp16"])
    summary = run_comfy_export(args)
    assert len(summary.splitlines()) == 1 and "longclip-sdxl.safetensors" in summary and NODE_PACKAGE in summary
    path = tmp_path / "out" / "models" / "text_encoders" / "longclip-sdxl.safetensors"
    assert safetensors_dtypes(path) == {"F16"} and comfyui_text_encoder_kind(path) == ("clip_l", 248)
    assert parser.parse_args([str(tmp_path)]).encoder == []


def test_without_encoders_only_the_package_is_written(tmp_path):
    export_comfyui(tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["custom_nodes"]


def test_a_missing_encoder_is_a_clear_error_and_nothing_is_written(sources, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors: no such file or folder"):
        export_comfyui(tmp_path / "new", [sources / "longclip-sd15", tmp_path / "missing.safetensors"])
    assert not (tmp_path / "new").exists()
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "models").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        export_comfyui(comfyui, [tmp_path / "missing.safetensors"])
    assert sorted(path.name for path in comfyui.iterdir()) == ["models"]  # an existing folder is left as it was
    assert list((comfyui / "models").iterdir()) == []


def test_existing_outputs_need_overwrite_and_other_files_stay(sources, tmp_path):
    comfyui = tmp_path / "ComfyUI"
    other = comfyui / "models" / "text_encoders" / "clip_l.safetensors"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"not ours")
    source = sources / "longclip-sd15"
    export_comfyui(comfyui, [source])
    with pytest.raises(FileExistsError, match="already exists; choose another output or pass --overwrite"):
        export_comfyui(comfyui, [source])
    export_comfyui(comfyui, [source], overwrite=True)
    assert other.read_bytes() == b"not ours"
    assert sorted(path.name for path in comfyui.iterdir()) == ["custom_nodes", "models"]
    assert sorted(path.name for path in other.parent.iterdir()) == ["clip_l.safetensors", "longclip-sd15.safetensors"]


def test_overwrite_keeps_the_workflows_a_user_saved_in_the_package(sources, tmp_path):
    comfyui = tmp_path / "ComfyUI"
    export_comfyui(comfyui, [sources / "longclip-sd15"])
    workflows = comfyui / "custom_nodes" / NODE_PACKAGE / "workflows"
    ours = sorted(path.name for path in workflows.iterdir())
    (workflows / "my_portrait_api.json").write_text('{"mine": true}')
    (workflows / "drafts").mkdir()
    (workflows / "drafts" / "v2.json").write_text("{}")
    export_comfyui(comfyui, [sources / "longclip-sd15"], overwrite=True)
    assert (workflows / "my_portrait_api.json").read_text() == '{"mine": true}'
    assert (workflows / "drafts" / "v2.json").read_text() == "{}"
    assert sorted(path.name for path in workflows.iterdir()) == sorted([*ours, "drafts", "my_portrait_api.json"])


def test_encoder_names_and_clashes(sources, tmp_path):
    assert encoder_file_name("BeichenZhang/LongCLIP-L") == "LongCLIP-L.safetensors"
    assert encoder_file_name("/models/longclip-L.pt") == "longclip-L.safetensors"
    assert encoder_file_name("/models/sdxl/text_encoder_2/") == "sdxl-text_encoder_2.safetensors"
    assert encoder_file_name(sources / "longclip-sd15/text_encoder/model.safetensors") == (
        "longclip-sd15-text_encoder.safetensors"
    )
    assert encoder_file_name("/models/LongCLIP-L/model.safetensors") == "LongCLIP-L.safetensors"
    with pytest.raises(ValueError, match="Several encoders would be written as longclip-sd15.safetensors"):
        export_comfyui(tmp_path / "out", [sources / "longclip-sd15", sources / "longclip-sd15"])
    with pytest.raises(ValueError, match="Unknown dtype 'fp8'"):
        export_comfyui(tmp_path / "out", [], dtype="fp8")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# Only what the Load Long-CLIP node loads is exported: each encoder is checked with the node's own code first
# ----------------------------------------------------------------------------------------------------------


def test_every_exported_file_loads_in_the_node_as_its_source_does(exported, sources, published_pt):
    folder = exported / "models" / "text_encoders"
    ids = torch.tensor([[49406, 320, 2368, 530, 518, 1251, 49407]])
    for name, source, clip_type in (
        ("longclip-tiny", published_pt[0], "clip_l"),
        ("longclip-sd15", sources / "longclip-sd15", "clip_l"),
        ("sdxl-text_encoder_2", sources / "sdxl" / "text_encoder_2", "clip_g"),  # 77 positions: fine for clip_g
    ):
        (from_file,) = LongCLIPLoader().load(str(folder / f"{name}.safetensors"), clip_type)
        (from_source,) = LongCLIPLoader().load(str(source), clip_type)
        assert from_file.num_positions == from_source.num_positions
        with torch.no_grad():
            assert torch.equal(
                from_file.text_encoder(ids).last_hidden_state, from_source.text_encoder(ids).last_hidden_state
            ), name


def test_an_encoder_the_node_refuses_in_every_role_is_not_exported(sources, tmp_path, capsys):
    """A 77-position CLIP-L without projection: neither a Long-CLIP-L (clip_l) nor SDXL's bigG (clip_g)."""
    plain = sources / "sd15" / "text_encoder"
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "models").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="would refuse it both as clip_l and as clip_g.*longclip stretch SRC"):
        export_comfyui(comfyui, [sources / "longclip-sd15", plain])
    assert [path.name for path in comfyui.rglob("*")] == ["models"]  # checked before anything is written

    capsys.readouterr()
    assert main(["comfy-export", str(tmp_path / "new"), "--encoder", str(plain)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"longclip: error: {plain}: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()

    single = convert(plain, tmp_path / "plain.safetensors", to="comfyui")  # what used to be exported
    for clip_type in ("clip_l", "clip_g"):
        with pytest.raises(CheckpointError):
            LongCLIPLoader().load(str(single), clip_type)


def test_an_encoder_whose_heads_the_node_cannot_infer_is_not_exported(tmp_path):
    """32 wide (as `longclip tiny`'s encoders): a weights-only file cannot say how many heads it has."""
    torch.manual_seed(0)
    CLIPTextModel(tiny_text_config(32)).save_pretrained(tmp_path / "clip")
    source = convert(tmp_path / "clip", tmp_path / "long", stretch=(20, 4))
    with pytest.raises(CheckpointError, match="could not load the exported file, which holds no config: text width 32"):
        export_comfyui(tmp_path / "out", [source])
    assert not (tmp_path / "out").exists()
    single = convert(source, tmp_path / "single.safetensors", to="comfyui")
    with pytest.raises(CheckpointError, match="text width 32 is not a multiple of 64"):
        LongCLIPLoader().load(str(single), "clip_l")
    assert LongCLIPLoader().load(str(source), "clip_l")[0].num_positions == 248  # the folder, as the error says


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_attention_heads", 4, "num_attention_heads=2 instead of 4"),  # 32-wide heads, not OpenAI's 64
        ("hidden_act", "gelu", "hidden_act='quick_gelu' instead of 'gelu'"),
    ],
)
def test_an_encoder_the_node_would_read_with_another_config_is_not_exported(field, value, message, tmp_path):
    config = openai_like_config(128)
    setattr(config, field, value)
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(tmp_path / "clip")
    source = convert(tmp_path / "clip", tmp_path / "long", stretch=(20, 4))
    with pytest.raises(CheckpointError, match=f"would infer {message} from its weights.*into models/text_encoders"):
        export_comfyui(tmp_path / "out", [source])
    assert not (tmp_path / "out").exists()

    # The node really would: from the single file it builds another model, which encodes differently.
    (from_file,) = LongCLIPLoader().load(str(convert(source, tmp_path / "x.safetensors", to="comfyui")), "clip_l")
    (from_folder,) = LongCLIPLoader().load(str(source), "clip_l")
    assert getattr(from_folder.text_encoder.config, field) == value != getattr(from_file.text_encoder.config, field)
    ids = torch.tensor([[49406, 320, 2368, 49407]])
    with torch.no_grad():
        file_states = from_file.text_encoder(ids).last_hidden_state
        folder_states = from_folder.text_encoder(ids).last_hidden_state
    assert not torch.allclose(file_states, folder_states, atol=1e-4)


def test_a_file_as_out_is_refused_before_any_encoder_is_read(sources, tmp_path, capsys, monkeypatch):
    import longclip_diffusers.comfy_export as comfy_export

    monkeypatch.setattr(comfy_export, "load_checkpoint", lambda *a: pytest.fail("an encoder was read"))
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for out, message in [
        (notes, f"{notes}: is a file; OUT is the folder to write into (a ComfyUI folder, say)."),
        (notes / "ComfyUI", f"{notes / 'ComfyUI'}: {notes} is a file, not a folder to write into."),
    ]:
        assert main(["comfy-export", str(out), "--encoder", str(sources / "longclip-sd15")]) == 1
        assert capsys.readouterr().err == f"longclip: error: {message}\n"
    assert notes.read_text() == "mine" and sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
