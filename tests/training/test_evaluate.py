"""`longclip eval`: dataset loaders, retrieval metrics against brute force, and the whole evaluation path against
open_clip (its tokenizer, preprocessing and model) as an independent reference."""

import argparse
import io
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from longclip_diffusers.convert import convert
from longclip_diffusers.training.eval_command import add_eval_arguments, parse_models, run_eval
from longclip_diffusers.training.eval_models import EvalModel, encode_images, encode_texts, load_model
from longclip_diffusers.training.eval_sets import (
    RetrievalSet,
    load_coco,
    load_docci,
    load_flickr30k,
    load_jsonl,
    load_sharegpt4v,
    load_urban1k,
    load_zero_shot,
    read_templates,
)
from longclip_diffusers.training.evaluate import evaluate
from longclip_diffusers.training.metrics import retrieval_metrics

WORDS = (
    "a red bicycle leans against an old brick wall under a striped awning while two children in yellow coats "
    "share an umbrella beside a flower stall &amp; the street lamps glow over wet cobblestones near the harbour"
).split()


def captions_for(count: int, seed: int, words=(20, 140)) -> list[str]:
    """Random captions, some longer than 77 tokens and some longer than 248."""
    rng = random.Random(seed)
    lengths = [rng.randint(*words) for _ in range(count)]
    lengths[0] = 260  # truncated even at 248 tokens
    return [" ".join(rng.choice(WORDS) for _ in range(length)) + "." for length in lengths]


def write_image(path, seed: int, size=(32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "gray").save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_urban1k(root, count: int = 8, seed: int = 0) -> list[str]:
    """An Urban-1k-style folder; images of several shapes exercise resizing and cropping."""
    captions = captions_for(count, seed)
    for index, caption in enumerate(captions, 1):
        size = [(32, 32), (48, 40), (40, 56)][index % 3]
        write_image(root / "image" / f"{index}.jpg", seed * 1000 + index, size)
        (root / "caption" / f"{index}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "caption" / f"{index}.txt").write_text(caption + "\n")
    return captions


# --------------------------------------------------------------------------------------------------------------
# Brute force and reference
# --------------------------------------------------------------------------------------------------------------


def brute_force_recall(image_features, text_features, owners, ks=(1, 5, 10)) -> dict:
    """Recall@k written out query by query: rank every candidate by similarity, look at the first k."""
    images = [row / row.norm() for row in image_features.double()]
    texts = [row / row.norm() for row in text_features.double()]
    similarity = [[float(image @ text) for text in texts] for image in images]
    result = {}
    for k in ks:
        hits = 0
        for i in range(len(images)):
            ranked = sorted(range(len(texts)), key=lambda j: -similarity[i][j])
            hits += any(owners[j] == i for j in ranked[:k])
        result[f"i2t_R@{k}"] = 100.0 * hits / len(images)
    for k in ks:
        hits = 0
        for j in range(len(texts)):
            ranked = sorted(range(len(images)), key=lambda i: -similarity[i][j])
            hits += owners[j] in ranked[:k]
        result[f"t2i_R@{k}"] = 100.0 * hits / len(texts)
    return result


def reference_image_features(open_clip_model, paths) -> torch.Tensor:
    from open_clip.transform import image_transform

    transform = image_transform(32, is_train=False)
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(path)) for path in paths])
        return F.normalize(open_clip_model.encode_image(pixels), dim=-1)


def reference_text_features(open_clip_model, texts, context_length: int = 248) -> torch.Tensor:
    """open_clip's tokenizer and text tower; shorter contexts are zero-padded to the model's 248 positions."""
    from open_clip.tokenizer import SimpleTokenizer

    ids = SimpleTokenizer(context_length=context_length)(texts)
    ids = F.pad(ids, (0, 248 - context_length))
    with torch.no_grad():
        return F.normalize(open_clip_model.encode_text(ids), dim=-1)


def reference_zero_shot(open_clip_model, dataset, templates, context_length: int = 248) -> dict:
    classes = []
    for name in dataset.class_names:
        prompts = reference_text_features(open_clip_model, [t.format(name) for t in templates], context_length)
        classes.append(F.normalize(prompts.mean(0), dim=-1))
    scores = reference_image_features(open_clip_model, dataset.images) @ torch.stack(classes).T
    result = {}
    for k in (1, 5):
        hits = sum(
            label in row.argsort(descending=True)[:k].tolist()
            for row, label in zip(scores, dataset.labels, strict=True)
        )
        result[f"top{k}"] = 100.0 * hits / len(dataset.labels)
    return result


# --------------------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------------------


def test_urban1k_pairs_images_and_captions_by_name(tmp_path):
    captions = make_urban1k(tmp_path / "Urban1k", count=11)
    dataset = load_urban1k(tmp_path / "Urban1k")
    assert [path.name for path in dataset.images] == [f"{i}.jpg" for i in range(1, 12)]  # 2 before 10
    assert dataset.captions == [caption.strip() for caption in captions]
    assert dataset.image_of_caption == list(range(11))


def test_urban1k_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="caption"):
        load_urban1k(tmp_path)
    make_urban1k(tmp_path / "u", count=3)
    write_image(tmp_path / "u" / "image" / "99.jpg", 1)
    with pytest.raises(ValueError, match="'99'"):
        load_urban1k(tmp_path / "u")
    (tmp_path / "u" / "image" / "99.jpg").unlink()
    (tmp_path / "u" / "caption" / "2.txt").write_text("  \n")
    with pytest.raises(ValueError, match="2.txt"):
        load_urban1k(tmp_path / "u")


def test_sharegpt4v_keeps_the_first_1000_entries_and_the_gpt_caption(tmp_path):
    image = png_bytes()
    (tmp_path / "images" / "sam").mkdir(parents=True)
    entries = []
    for index in range(1003):
        (tmp_path / "images" / "sam" / f"{index}.png").write_bytes(image)
        conversations = [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": f"cap {index}"}]
        entries.append({"id": index, "image": f"sam/{index}.png", "conversations": conversations})
    (tmp_path / "share.json").write_text(json.dumps(entries))
    dataset = load_sharegpt4v(tmp_path / "share.json", tmp_path / "images")
    assert len(dataset.images) == len(dataset.captions) == 1000
    assert dataset.captions[7] == "cap 7" and dataset.images[7] == tmp_path / "images" / "sam" / "7.png"
    assert dataset.image_of_caption == list(range(1000))

    with pytest.raises(FileNotFoundError, match="1000 of its 1000 images are missing"):
        load_sharegpt4v(tmp_path / "share.json")  # images are not beside the JSON
    entries[3]["conversations"] = entries[3]["conversations"][:1]
    (tmp_path / "bad.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"bad.json: entry \[3\]: not a ShareGPT4V entry"):
        load_sharegpt4v(tmp_path / "bad.json", tmp_path / "images")
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(ValueError, match="dict.json: expected a JSON list of ShareGPT4V entries, found a dict"):
        load_sharegpt4v(tmp_path / "dict.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="broken.json:1: not valid JSON"):
        load_sharegpt4v(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="missing.json: no such file"):
        load_sharegpt4v(tmp_path / "missing.json")


def karpathy_file(path, images: list[tuple[str, str, int, list[str]]], filepath: str | None = None) -> None:
    """A Karpathy split file from (filename, split, id, sentences)."""
    rows = []
    for filename, split, image_id, sentences in images:
        row = {"filename": filename, "split": split, "cocoid": image_id, "sentences": [{"raw": s} for s in sentences]}
        if filepath:
            row["filepath"] = filepath
        rows.append(row)
    path.write_text(json.dumps({"images": rows, "dataset": "coco"}))


def test_coco_captions_json_with_and_without_the_karpathy_split(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        write_image(tmp_path / "val2014" / name, 0)
    images = [{"id": 10, "file_name": "a.jpg"}, {"id": 11, "file_name": "b.jpg"}, {"id": 12, "file_name": "c.jpg"}]
    images.append({"id": 13, "file_name": "d.jpg"})  # no annotations: dropped
    annotations = [{"image_id": 11, "caption": "b one"}, {"image_id": 10, "caption": "a one"}]
    annotations += [{"image_id": 12, "caption": f"c {n}"} for n in range(7)]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))

    dataset = load_coco(tmp_path / "captions.json", tmp_path / "val2014")
    assert [path.name for path in dataset.images] == ["a.jpg", "b.jpg", "c.jpg"]
    assert dataset.captions == ["a one", "b one", "c 0", "c 1", "c 2", "c 3", "c 4"]  # 5 captions per image
    assert dataset.image_of_caption == [0, 1, 2, 2, 2, 2, 2]
    assert len(load_coco(tmp_path / "captions.json", tmp_path / "val2014", captions_per_image=None).captions) == 9

    split = [("a.jpg", "train", 10, ["x"]), ("c.jpg", "test", 12, ["y"]), ("b.jpg", "test", 11, ["z"])]
    karpathy_file(tmp_path / "dataset_coco.json", split + [("d.jpg", "restval", 13, ["w"])], filepath="val2014")
    restricted = load_coco(tmp_path / "captions.json", tmp_path / "val2014", karpathy=tmp_path / "dataset_coco.json")
    assert [path.name for path in restricted.images] == ["c.jpg", "b.jpg"]
    assert restricted.captions == ["c 0", "c 1", "c 2", "c 3", "c 4", "b one"]

    # The Karpathy file alone: its own sentences, images at ROOT/filepath/filename.
    alone = load_coco(tmp_path / "dataset_coco.json")
    assert alone.images == [tmp_path / "val2014" / "c.jpg", tmp_path / "val2014" / "b.jpg"]
    assert alone.captions == ["y", "z"]

    karpathy_file(tmp_path / "other.json", [("e.jpg", "test", 99, ["v"])])
    with pytest.raises(ValueError, match="lacks 1 of the 1 Karpathy test images"):
        load_coco(tmp_path / "captions.json", tmp_path / "val2014", karpathy=tmp_path / "other.json")
    (tmp_path / "bad.json").write_text(json.dumps({"images": images, "annotations": [{"caption": "no id"}]}))
    with pytest.raises(ValueError, match="bad.json: is not a COCO captions JSON"):
        load_coco(tmp_path / "bad.json", tmp_path / "val2014")


def test_flickr30k_karpathy_json_and_token_file(tmp_path):
    images = tmp_path / "flickr30k-images"
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        write_image(images / name, 0)
    split = [("1.jpg", "train", 1, ["a"] * 5), ("2.jpg", "test", 2, [f"two {n}" for n in range(5)])]
    karpathy_file(tmp_path / "dataset_flickr30k.json", split + [("3.jpg", "test", 3, [f"three {n}" for n in range(5)])])
    dataset = load_flickr30k(tmp_path / "dataset_flickr30k.json")  # images found in flickr30k-images/
    assert dataset.images == [images / "2.jpg", images / "3.jpg"]
    assert dataset.captions[:2] == ["two 0", "two 1"] and dataset.image_of_caption == [0] * 5 + [1] * 5

    lines = [f"{name}#{n}\t{name[0]} caption {n}" for name in ("1.jpg", "2.jpg", "3.jpg") for n in range(5)]
    (tmp_path / "results_20130124.token").write_text("\n".join(lines) + "\n")
    everything = load_flickr30k(tmp_path / "results_20130124.token")
    assert len(everything.images) == 3 and len(everything.captions) == 15
    assert everything.captions[5] == "2 caption 0" and everything.image_of_caption[5] == 1
    test_only = load_flickr30k(tmp_path / "results_20130124.token", karpathy=tmp_path / "dataset_flickr30k.json")
    assert test_only.images == [images / "2.jpg", images / "3.jpg"] and len(test_only.captions) == 10

    (tmp_path / "bad.token").write_text("1.jpg#0\tfine\n1.jpg no tab here\n")
    with pytest.raises(ValueError, match="bad.token, line 2"):
        load_flickr30k(tmp_path / "bad.token")
    karpathy_file(tmp_path / "nosplit.json", [("1.jpg", "train", 1, ["a"])])
    with pytest.raises(ValueError, match="no 'test' images"):
        load_flickr30k(tmp_path / "nosplit.json")


def test_docci_test_split(tmp_path):
    for name in ("test_1.jpg", "test_2.jpg", "train_1.jpg"):
        write_image(tmp_path / "images" / name, 0)
    rows = [
        {"example_id": "test_1", "split": "test", "image_file": "test_1.jpg", "description": "first"},
        {"example_id": "train_1", "split": "train", "image_file": "train_1.jpg", "description": "skip"},
        {"example_id": "test_2", "split": "test", "image_file": "test_2.jpg", "description": "second"},
    ]
    write_jsonl(tmp_path / "docci_descriptions.jsonlines", rows)
    dataset = load_docci(tmp_path / "docci_descriptions.jsonlines")
    assert dataset.images == [tmp_path / "images" / "test_1.jpg", tmp_path / "images" / "test_2.jpg"]
    assert dataset.captions == ["first", "second"]
    with pytest.raises(ValueError, match="no 'qual_test' rows \\(splits found: test, train\\)"):
        load_docci(tmp_path / "docci_descriptions.jsonlines", split="qual_test")
    (tmp_path / "bad.jsonlines").write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="bad.jsonlines:2: not valid JSON"):
        load_docci(tmp_path / "bad.jsonlines")


def test_generic_jsonl_groups_captions_of_one_image(tmp_path):
    write_image(tmp_path / "x.png", 0)
    write_image(tmp_path / "sub" / "y.png", 1)
    rows = [{"image": "x.png", "caption": "x one"}, {"image": "sub/y.png", "caption": "y"}]
    write_jsonl(tmp_path / "set.jsonl", rows + [{"image": "x.png", "caption": "x two"}])
    dataset = load_jsonl(tmp_path / "set.jsonl")
    assert dataset.images == [tmp_path / "x.png", tmp_path / "sub" / "y.png"]
    assert dataset.captions == ["x one", "y", "x two"] and dataset.image_of_caption == [0, 1, 0]
    write_jsonl(tmp_path / "bad.jsonl", [{"image": "x.png", "text": "wrong key"}])
    with pytest.raises(ValueError, match="bad.jsonl:1: lacks an `image` or `caption`"):
        load_jsonl(tmp_path / "bad.jsonl")
    write_jsonl(tmp_path / "gone.jsonl", [{"image": "nowhere.png", "caption": "c"}])
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        load_jsonl(tmp_path / "gone.jsonl")


def test_retrieval_set_refuses_inconsistent_indices(tmp_path):
    with pytest.raises(ValueError, match="one per caption"):
        RetrievalSet([tmp_path / "a"], ["x", "y"], [0])
    with pytest.raises(ValueError, match="has no caption"):
        RetrievalSet([tmp_path / "a", tmp_path / "b"], ["x", "y"], [0, 0])
    with pytest.raises(ValueError, match="must be in 0..0"):
        RetrievalSet([tmp_path / "a"], ["x"], [1])


def test_zero_shot_folder_classes_and_templates(tmp_path):
    for name in ("golden_retriever", "tabby_cat"):
        for index in range(2):
            write_image(tmp_path / "val" / name / f"{index}.png", index)
    (tmp_path / "val" / "tabby_cat" / "notes.txt").write_text("not an image")
    dataset = load_zero_shot(tmp_path / "val")
    assert dataset.class_names == ["golden retriever", "tabby cat"] and dataset.labels == [0, 0, 1, 1]
    named = load_zero_shot(tmp_path / "val", class_names={"golden_retriever": "dog", "tabby_cat": "cat"})
    assert named.class_names == ["dog", "cat"]
    with pytest.raises(ValueError, match="2 class folders but 1 class names"):
        load_zero_shot(tmp_path / "val", class_names=["dog"])
    with pytest.raises(ValueError, match="'{}'"):
        load_zero_shot(tmp_path / "val", templates=("no slot",))
    openai = read_templates("openai")
    assert len(openai) == 80 and openai[0] == "a bad photo of a {}."
    (tmp_path / "templates.txt").write_text("a {}.\n\nart of a {}.\n")
    assert read_templates(str(tmp_path / "templates.txt")) == ("a {}.", "art of a {}.")


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_retrieval_metrics_equal_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    num_images = 13 + seed
    counts = torch.randint(1, 6, (num_images,), generator=generator).tolist()  # 1 to 5 captions per image
    owners = [image for image, count in enumerate(counts) for _ in range(count)]
    random.Random(seed).shuffle(owners)
    # Captions near their image, but noisy enough that many are not ranked first.
    images = torch.randn(num_images, 8, generator=generator)
    texts = images[owners] + 1.2 * torch.randn(len(owners), 8, generator=generator)
    ks = (1, 2, 5, 10)
    got = retrieval_metrics(images * 3.0, texts, owners, ks=ks)  # the scale of features must not matter
    expected = brute_force_recall(images, texts, owners, ks=ks)
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0 < got["i2t_R@1"] < 100 and 0 < got["t2i_R@1"] < 100


def test_retrieval_metrics_hand_made_case():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # caption 0 and 3 describe image 0, caption 1 image 1, caption 2 (a poor one) image 2.
    texts = torch.tensor([[1.0, 0.1], [0.2, 1.0], [-1.0, 0.0], [0.1, -1.0]])
    metrics = retrieval_metrics(images, texts, [0, 1, 2, 0], ks=(1, 2, 4))
    # Image 2 ranks its caption last of four; caption 2 ranks its image second (after image 1).
    assert metrics == pytest.approx(
        {"i2t_R@1": 200 / 3, "i2t_R@2": 200 / 3, "i2t_R@4": 100.0, "t2i_R@1": 75.0, "t2i_R@2": 100.0, "t2i_R@4": 100.0}
    )


def test_retrieval_metrics_ties_do_not_count_against_the_query():
    images = torch.tensor([[1.0, 0.0], [0.9, 0.1]])
    texts = torch.tensor([[1.0, 0.05], [1.0, 0.05]])  # the same caption under both images
    assert retrieval_metrics(images, texts, [0, 1], ks=(1,))["i2t_R@1"] == 100.0
    with pytest.raises(ValueError, match="one index"):
        retrieval_metrics(images, texts, [0, 2])


# --------------------------------------------------------------------------------------------------------------
# Encoding and the whole path, against open_clip
# --------------------------------------------------------------------------------------------------------------


def test_features_match_open_clip_at_248_and_77_tokens(published_pt, tmp_path):
    path, reference = published_pt
    captions = make_urban1k(tmp_path, count=6, seed=3)
    dataset = load_urban1k(tmp_path)
    model, tokenizer, transform = load_model(path)
    assert tokenizer.model_max_length == 248
    images = encode_images(model, transform, dataset.images, batch_size=4, progress=False)
    torch.testing.assert_close(images, reference_image_features(reference, dataset.images), atol=2e-5, rtol=0)
    for length in (248, 77):
        texts = encode_texts(model, tokenizer, captions, max_length=length, batch_size=4, progress=False)
        torch.testing.assert_close(texts, reference_text_features(reference, captions, length), atol=2e-5, rtol=0)
    # A Hugging Face CLIPModel folder written by `longclip convert --to clip`, with CLIP's image statistics altered.
    folder = convert(path, tmp_path / "clip", to="clip")
    config = json.loads((folder / "processor_config.json").read_text())
    config["image_processor"]["image_mean"] = [0.5, 0.5, 0.5]
    (folder / "processor_config.json").write_text(json.dumps(config))
    hf_model, hf_tokenizer, hf_transform = load_model(folder)
    texts = encode_texts(hf_model, hf_tokenizer, captions, progress=False)
    torch.testing.assert_close(texts, reference_text_features(reference, captions), atol=2e-5, rtol=0)
    assert list(hf_transform.transforms[-1].mean) == [0.5, 0.5, 0.5]

    short_model, short_tokenizer, _ = load_model(EvalModel(path, max_length=77))
    assert short_tokenizer.model_max_length == 77
    with pytest.raises(ValueError, match="exceeds the model's 248"):
        encode_texts(short_model, short_tokenizer, captions, max_length=300)


def test_evaluate_end_to_end_matches_open_clip(published_pt, tmp_path):
    path, reference = published_pt
    captions = make_urban1k(tmp_path / "urban", count=24, seed=5)
    urban = load_urban1k(tmp_path / "urban")
    for label, name in enumerate(["red_fox", "sea", "tram", "harbour_crane", "bird", "wall"]):
        for index in range(2):
            write_image(tmp_path / "classes" / name / f"{index}.png", 100 * label + index, (40, 36))
    templates = ("a photo of a {}.", "a blurry drawing of the {}.")
    zero_shot = load_zero_shot(tmp_path / "classes", templates)

    models = {"Long-CLIP": path, "CLIP-77": EvalModel(path, max_length=77)}
    report = evaluate(models, {"urban1k": urban, "zero-shot": zero_shot}, tmp_path / "out", progress=False)

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "results.png"]  # no temp files
    assert json.loads((out / "results.json").read_text()) == report
    assert report["models"]["CLIP-77"]["max_length"] == 77 and report["models"]["Long-CLIP"]["max_length"] == 248
    assert report["benchmarks"]["urban1k"] == {"kind": "retrieval", "images": 24, "captions": 24}
    for scores in report["results"].values():
        assert set(scores["urban1k"]) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
        assert set(scores["zero-shot"]) == {"top1", "top5"}
        assert all(0 <= value <= 100 for values in scores.values() for value in values.values())
    with Image.open(out / "results.png") as chart:
        assert chart.format == "PNG" and chart.width > 300
    table = (out / "results.md").read_text()
    assert table.count("| Long-CLIP | 248 |") == 2 and table.count("| CLIP-77 | 77 |") == 2

    image_features = reference_image_features(reference, urban.images)
    for name, length in (("Long-CLIP", 248), ("CLIP-77", 77)):
        text_features = reference_text_features(reference, captions, length)
        expected = brute_force_recall(image_features, text_features, urban.image_of_caption)
        assert report["results"][name]["urban1k"] == pytest.approx(expected, abs=1e-9)
        assert report["results"][name]["zero-shot"] == pytest.approx(
            reference_zero_shot(reference, zero_shot, templates, length), abs=1e-9
        )


def eval_args(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="longclip eval")
    add_eval_arguments(parser)
    return parser.parse_args([str(arg) for arg in argv])


def test_run_eval_command_line(published_pt, tmp_path):
    path, _ = published_pt
    make_urban1k(tmp_path / "urban", count=4)
    write_image(tmp_path / "pics" / "p.png", 0)
    write_jsonl(tmp_path / "mine.jsonl", [{"image": "p.png", "caption": "a"}, {"image": "p.png", "caption": "b"}])
    out = tmp_path / "out"
    args = eval_args(
        "--model", f"long={path}", "--baseline", path, "--urban1k", tmp_path / "urban",
        "--jsonl", tmp_path / "mine.jsonl", "--images", tmp_path / "pics",
        "--out", out, "--device", "cpu", "--workers", 1, "--batch-size", 3,
    )  # fmt: skip
    summary = run_eval(args)
    assert summary.startswith(f"wrote results.json, results.md, results.png to {out}: long urban1k I2T/T2I R@1 ")
    report = json.loads((out / "results.json").read_text())
    assert list(report["models"]) == ["long", "longclip-tiny (77 tokens)"]
    assert list(report["benchmarks"]) == ["urban1k", "mine"]
    assert report["results"]["long"]["mine"]["i2t_R@1"] == 100.0  # one image: always first

    # A second evaluation into the same folder keeps the first one's results unless told to replace them.
    again = ["--model", path, "--jsonl", tmp_path / "mine.jsonl", "--images", tmp_path / "pics", "--out", out]
    kept = {name: (out / name).read_bytes() for name in ("results.json", "results.md", "results.png")}
    with pytest.raises(FileExistsError, match="holds the results of an earlier evaluation .* pass --overwrite"):
        run_eval(eval_args(*again, "--workers", 0))
    assert {name: (out / name).read_bytes() for name in kept} == kept
    run_eval(eval_args(*again, "--workers", 0, "--overwrite"))
    assert list(json.loads((out / "results.json").read_text())["models"]) == ["longclip-tiny"]

    with pytest.raises(ValueError, match="at least one benchmark: --urban1k"):
        run_eval(eval_args("--model", path, "--out", out))
    with pytest.raises(ValueError, match="Give a model"):
        run_eval(eval_args("--urban1k", tmp_path / "urban", "--out", out))
    with pytest.raises(ValueError, match="named 'x'"):
        parse_models([f"x={path}", f"x={path}"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_eval(eval_args("--model", path, "--docci", tmp_path / "nowhere.jsonlines", "--out", out))
