"""Hub ids resolve through huggingface_hub; only the download is mocked (the Hub cannot be reached here).

The fake serves each repo from a local folder: `list_repo_files` lists it and `snapshot_download` copies the
files matching `allow_patterns` into a cache folder, as the real functions do.
"""

import fnmatch
import json
import shutil
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import save_file

from longclip_diffusers.hub import resolve, select_files
from longclip_diffusers.text_encoder import LongCLIPTextEncoder
from longclip_diffusers.tokenizer import LongCLIPTokenizer


class FakeHub:
    def __init__(self, root: Path):
        self.root = root
        self.repos: dict[str, Path] = {}
        self.downloaded: list[str] = []

    def add(self, repo_id: str, files: dict[str, bytes | Path]) -> None:
        folder = self.root / "remote" / repo_id
        for name, content in files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copy(content, target)
            else:
                target.write_bytes(content)
        self.repos[repo_id] = folder

    def list_repo_files(self, repo_id, revision=None, **_):
        if repo_id not in self.repos:
            response = httpx2.Response(
                404, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
            )
            raise RepositoryNotFoundError(f"404 Client Error: Repository Not Found for {repo_id}", response=response)
        return sorted(str(p.relative_to(self.repos[repo_id])) for p in self.repos[repo_id].rglob("*") if p.is_file())

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None, local_files_only=False, **_):
        cache = self.root / "cache" / repo_id.replace("/", "--") / (revision or "main")
        if local_files_only:
            if not cache.exists():
                raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
            return str(cache)
        for name in self.list_repo_files(repo_id):
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (cache / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(self.repos[repo_id] / name, cache / name)
                self.downloaded.append(f"{repo_id}/{name}")
        return str(cache)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", fake.list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    return fake


def test_published_long_clip_repo_downloads_only_its_checkpoint(hub, published_pt):
    path, _ = published_pt
    hub.add("BeichenZhang/LongCLIP-L", {"longclip-L.pt": path, "README.md": b"# card", ".gitattributes": b""})

    model = LongCLIPTextEncoder.from_pretrained("BeichenZhang/LongCLIP-L")
    local = LongCLIPTextEncoder.from_pretrained(path)
    assert hub.downloaded == ["BeichenZhang/LongCLIP-L/longclip-L.pt"]
    assert model.config.max_position_embeddings == 248
    for key, value in local.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    tokenizer = LongCLIPTokenizer.from_pretrained("BeichenZhang/LongCLIP-L")
    assert tokenizer.model_max_length == 248
    assert tokenizer("a cat")["input_ids"] == [49406, 320, 2368, 49407]


def test_hf_repo_downloads_config_tokenizer_and_one_weights_format(hub, tiny_components):
    encoder = tiny_components / "longclip-sd15"
    hub.add(
        "someone/longclip-sd15",
        {
            "text_encoder/config.json": encoder / "text_encoder/config.json",
            "text_encoder/model.safetensors": encoder / "text_encoder/model.safetensors",
            "text_encoder/pytorch_model.bin": b"never fetched",
            "text_encoder/tf_model.h5": b"never fetched",
            **{f"tokenizer/{p.name}": p for p in (encoder / "tokenizer").iterdir()},
        },
    )
    model = LongCLIPTextEncoder.from_pretrained("someone/longclip-sd15")
    tokenizer = LongCLIPTokenizer.from_pretrained("someone/longclip-sd15")
    assert model.config.max_position_embeddings == tokenizer.model_max_length == 248
    assert not any(name.endswith((".bin", ".h5")) for name in hub.downloaded)
    assert "someone/longclip-sd15/text_encoder/model.safetensors" in hub.downloaded


def test_pipeline_repo_subfolder(hub, tiny_components):
    sdxl = tiny_components / "sdxl"
    hub.add("org/sdxl", {str(p.relative_to(sdxl)): p for p in sdxl.rglob("*") if p.is_file()})
    model = LongCLIPTextEncoder.from_pretrained("org/sdxl", subfolder="text_encoder_2", allow_short=True)
    assert type(model).__name__ == "CLIPTextModelWithProjection"
    assert all(name.startswith("org/sdxl/text_encoder_2/") for name in hub.downloaded)


def test_unknown_repo_is_a_clear_error(hub):
    with pytest.raises(FileNotFoundError, match="nobody/nothing: neither a local path nor a Hugging Face Hub repo"):
        LongCLIPTextEncoder.from_pretrained("nobody/nothing")


def test_unreachable_hub_falls_back_to_the_cache(hub, published_pt, monkeypatch):
    path, _ = published_pt
    hub.add("BeichenZhang/LongCLIP-B", {"longclip-B.pt": path})
    first = resolve("BeichenZhang/LongCLIP-B")  # fills the cache

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", unreachable)
    assert resolve("BeichenZhang/LongCLIP-B") == first
    with pytest.raises(FileNotFoundError, match="unreachable with nothing cached.*ConnectionError"):
        resolve("BeichenZhang/LongCLIP-L")


def test_repo_without_clip_files(hub):
    hub.add("someone/empty", {"README.md": b"hi"})
    with pytest.raises(FileNotFoundError, match="no CLIP weights or tokenizer files"):
        resolve("someone/empty")


def test_file_selection_prefers_safetensors_and_skips_other_frameworks():
    files = [
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "flax_model.msgpack",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    assert sorted(select_files(files)) == [
        "config.json",
        "model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
    ]
    sharded = ["text_encoder/config.json", "text_encoder/model.safetensors.index.json"]
    sharded += ["text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors"]
    assert "text_encoder/model-*.safetensors" in select_files(sharded)


def test_local_looking_paths_never_reach_the_hub(hub, tmp_path):
    for source in ("./missing", "missing.pt", str(tmp_path / "a/b/c"), "a/b/c"):
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            resolve(source)
    assert hub.downloaded == []


def test_sharded_safetensors_folder(tmp_path, tiny_components):
    """Large text encoders (bigG) are often saved in shards; they read like one file."""
    from longclip_diffusers.formats import load_checkpoint, read_state_dict

    source = tiny_components / "longclip-sdxl/text_encoder"
    tensors = read_state_dict(source / "model.safetensors")
    names = sorted(tensors)
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(source / "config.json", folder / "config.json")
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({key: tensors[key].contiguous() for key in keys}, folder / shard)
    weight_map = {key: shard for shard, keys in halves.items() for key in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_checkpoint(folder)
    assert sorted(loaded.state_dict) == names
    assert all(torch.equal(loaded.state_dict[key], tensors[key]) for key in names)
