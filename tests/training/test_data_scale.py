"""Training data at scale: tar shards streamed a sample at a time and resumed exactly, ShareGPT4V's 1.2 M pairs
kept compact, and images read straight from the zip and tar archives they are downloaded as.

Real files throughout (tar shards, zip and tar archives, a 100k-entry ShareGPT4V JSON, real forked processes);
figures this file measures are printed (`pytest -s`) and recorded as test properties, not asserted as timings.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.training import config_for, losses_of, train_args, write_dataset, write_shards
from PIL import Image

from longclip_diffusers.training import tar_shards, text_files
from longclip_diffusers.training.images import UnusableSample, check_images_exist, read_image
from longclip_diffusers.training.records import read_records, read_sharegpt4v_test_split
from longclip_diffusers.training.samples import CaptionDataset, SampleBuilder, collate
from longclip_diffusers.training.tar_shards import StreamPosition, TarShardDataset, expand_shards
from longclip_diffusers.training.train import train


def png(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def add_member(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(payload)
    archive.addfile(member, io.BytesIO(payload))


def report(record_property, **figures) -> None:
    for name, value in figures.items():
        record_property(name, value)
    print(" ".join(f"{name}={value}" for name, value in figures.items()))


def pixel_builder(log: Path | None = None) -> SampleBuilder:
    """Samples whose `image` is the decoded image's pixels (so two reads compare exactly); each decode is logged
    to `log` (one line, appended: data-loader workers are other processes)."""

    def transform(image: Image.Image) -> torch.Tensor:
        if log is not None:
            with log.open("a") as handle:
                handle.write("decoded\n")
        return torch.from_numpy(np.asarray(image).copy())

    return SampleBuilder(transform, lambda texts: torch.tensor([[len(text)] for text in texts]))


# ----------------------------------------------------------------------------------------------------------
# Tar shards: one sample in memory at a time
# ----------------------------------------------------------------------------------------------------------


def test_a_tar_shard_streams_holding_one_sample_at_a_time(tmp_path, record_property):
    samples, side = 48, 300  # 48 noise PNGs of about 270 kB: a 13 MB shard
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as archive:
        for index in range(samples):
            add_member(archive, f"{index:04d}.png", png(index, side))
            add_member(archive, f"{index:04d}.txt", f"A picture of noise number {index}.".encode())
    sample_bytes = shard.stat().st_size / samples
    dataset = TarShardDataset([str(shard)], SampleBuilder(lambda image: torch.zeros(1), lambda t: torch.zeros(2, 1)))

    tracemalloc.start()
    try:
        read = sum(1 for _ in dataset)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read == samples
    report(record_property, shard_mb=round(shard.stat().st_size / 2**20, 1), peak_traced_mb=round(peak / 2**20, 2))
    assert peak < 4 * sample_bytes  # the sample being read (and its decoding), not the 48 of the shard


def test_members_of_a_sample_are_grouped_by_webdataset_keys(tmp_path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as archive:
        for name in ("./a.png", "./a.txt", "dir.v2/b.png", "dir.v2/b.json", "README", "c.x.png", "c.x.txt"):
            add_member(archive, name, name.encode())
    assert [(key, sorted(parts)) for key, parts in tar_shards._tar_samples(str(shard))] == [
        ("./a", ["png", "txt"]),
        ("dir.v2/b", ["json", "png"]),
        ("c", ["x.png", "x.txt"]),  # webdataset: the key ends at the file name's first dot
    ]
    assert [key for key, _ in tar_shards._tar_samples(str(shard), skip=2)] == ["c"]


@pytest.mark.parametrize("cut", ["inside-a-member", "between-members", "between-samples"])
def test_a_tar_shard_cut_short_names_its_last_sample_a_damaged_archive(tmp_path, cut):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as archive:
        for index, key in enumerate("abc"):
            add_member(archive, f"{key}.png", png(index))
            add_member(archive, f"{key}.txt", f"Picture {key}.".encode())
    with tarfile.open(shard) as archive:
        offsets = {member.name: (member.offset, member.offset_data) for member in archive}
    end = {
        "inside-a-member": offsets["c.png"][1] + 100,  # c.png's data stops short
        "between-members": offsets["c.txt"][0],  # c.png whole, its caption gone
        "between-samples": offsets["c.png"][0],  # b whole as far as anything can tell, c gone
    }[cut]
    shard.write_bytes(shard.read_bytes()[:end])
    last = "b" if cut == "between-samples" else "c"
    samples = list(tar_shards._tar_samples(str(shard)))
    assert [key for key, _ in samples] == (["a", "b"] if last == "b" else ["a", "b", "c"])
    assert samples[-1][1] is None and all(parts for _, parts in samples[:-1])
    streamed = list(TarShardDataset([str(shard)], pixel_builder()))
    assert [entry for sample in streamed for entry in sample["skipped"]] == [
        (f"{shard}:{last}", "cut short (a damaged archive)")
    ]
    assert sum("image" in sample for sample in streamed) == (1 if last == "b" else 2)


# ----------------------------------------------------------------------------------------------------------
# Tar shards: exact resume positions
# ----------------------------------------------------------------------------------------------------------


def stream_batches(dataset: TarShardDataset, workers: int, count: int | None = None) -> list[dict]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=collate)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def same_batches(first: list[dict], second: list[dict]) -> bool:
    def key(batch: dict) -> tuple:
        images = [image.numpy().tobytes() for image in batch.get("image", [])]
        return images, batch.get("long_text", torch.zeros(0)).tolist(), batch["skipped"], batch["position"]

    return [key(batch) for batch in first] == [key(batch) for batch in second]


@pytest.mark.parametrize("consumed", [1, 4, 7])
def test_a_resumed_stream_continues_exactly_and_decodes_none_of_the_consumed_samples(tmp_path, consumed):
    folder = write_dataset(tmp_path / "data", count=16)
    pattern = write_shards(folder, shards=4, per_shard=7, corrupt={(0, 2), (2, 6)}, bad_captions={(3, 0)})
    shards = expand_shards(pattern)
    log = tmp_path / "decoded.txt"
    whole = stream_batches(TarShardDataset(shards, pixel_builder()), workers=2)
    assert sum(len(batch.get("image", ())) for batch in whole) == 4 * 7 - 3  # every usable sample, once

    position = StreamPosition()
    for batch in stream_batches(TarShardDataset(shards, pixel_builder()), workers=2, count=consumed):
        position.advance(batch["position"])
    resumed = TarShardDataset(shards, pixel_builder(log))
    resumed.set_epoch(0)
    resumed.resume(StreamPosition.from_state(json.loads(json.dumps(position.state()))))  # through a checkpoint
    rest = stream_batches(resumed, workers=2)
    assert same_batches(rest, whole[consumed:])
    decoded = len(log.read_text().splitlines()) if log.exists() else 0
    assert decoded == sum(len(batch.get("image", ())) for batch in whole[consumed:])  # none read twice


def test_a_killed_shard_run_with_workers_resumes_exactly(tmp_path):
    """SIGKILL mid-epoch, 2 data-loader workers, shards with unusable samples: the resumed run logs the same
    losses, bit for bit, as an uninterrupted one, through the epoch's end into the next."""
    folder = write_dataset(tmp_path / "data", count=16)
    pattern = write_shards(folder, shards=4, per_shard=9, corrupt={(0, 3), (2, 7)}, bad_captions={(1, 0)})
    flags = dict(train_data=pattern, batch_size=4, max_steps=12, save_every=2, keep_checkpoints=20, workers=2,
                 pca_components=2)  # fmt: skip
    reference = tmp_path / "reference"
    train(config_for(folder, reference, **flags))

    output = tmp_path / "killed"
    command = [sys.executable, "-m", "longclip_diffusers", *train_args(folder, output, **flags)]  # the same run
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (output / "checkpoints/step_6").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (output / "checkpoints/step_6").exists() and not (output / "final").exists()  # killed mid-run
    state = json.loads((output / "checkpoints/step_6/trainer_state.json").read_text())
    assert state["epoch"] == 0 and len(state["streams"]) == 1 and len(state["streams"][0]["shards"]) == 2

    resumed = subprocess.run([*command, "--resume", "auto"], capture_output=True, text=True, env=os.environ)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses_of(output) == losses_of(reference)  # every step, bit for bit
    assert sorted(losses_of(output)) == list(range(1, 13))
    epochs = [json.loads(line)["epoch"] for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert epochs[5] == 0 and epochs[-1] >= 1  # killed in the first epoch, finished in a later one
    assert (output / "skipped_images.txt").read_text() == (reference / "skipped_images.txt").read_text()
    assert len((output / "skipped_images.txt").read_text().splitlines()) == 3


# ----------------------------------------------------------------------------------------------------------
# ShareGPT4V at scale
# ----------------------------------------------------------------------------------------------------------

SENTENCES = (
    "The image shows a quiet harbour at dawn, with fishing boats moored along a weathered stone pier.",
    "Gulls circle above the masts while a man in a yellow coat coils rope on the deck of the nearest boat.",
    "In the background, pastel houses climb a hillside, their windows catching the first light of the day.",
    "The water is calm and reflects the boats, the houses and a pale sky streaked with thin clouds.",
    "A red lighthouse stands at the end of the pier, its lamp still glowing faintly in the morning haze.",
    "Stacked crates and tangled nets line the quay, and a bicycle leans against a lamppost near a café.",
)


def sharegpt4v_entry(index: int) -> dict:
    folder = ("coco/train2017", "sam/images", f"llava/llava_pretrain/images/{index // 1000:05d}")[index % 3]
    sentences = [SENTENCES[(index + k) % len(SENTENCES)] for k in range(6 + index % 5)]
    return {
        "id": str(index),
        "image": f"{folder}/{index:09d}.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat do you see happening in this image?"},
            {"from": "gpt", "value": f"Picture {index}. " + " ".join(sentences)},
        ],
    }


MEASURE_MEMORY = r"""
import gc, json, multiprocessing, sys, time
from pathlib import Path
from longclip_diffusers.training.records import read_records

def memory(*fields):
    text = Path("/proc/self/status").read_text() + Path("/proc/self/smaps_rollup").read_text()
    lines = text.splitlines()
    return sum(int(line.split()[1]) * 1024 for line in lines if line.startswith(fields))

def growth_of_a_worker(records):
    # Private memory a forked process gains by reading every record once, as data-loader workers do over an
    # epoch: pages shared with its parent that it had to copy. (Reference counts alone copy them; the worker's
    # garbage collections, held off here, would copy the pages of every container object on top.)
    def worker(pipe):
        gc.disable()
        before = memory("Private_Dirty", "Private_Clean")
        characters = sum(len(records[index].caption) for index in range(len(records)))
        pipe.send((memory("Private_Dirty", "Private_Clean") - before, characters))

    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=worker, args=(child,))
    process.start()
    growth, characters = parent.recv()
    process.join()
    assert characters > 0
    return growth

before = memory("VmRSS")
records = read_records(sys.argv[1], sys.argv[2])
figures = {"load_peak_rss": memory("VmHWM") - before, "table": records.nbytes}
figures["worker_growth_table"] = growth_of_a_worker(records)
records = list(records)  # records as Python objects: what every data-loader worker was given before
gc.collect()
figures["worker_growth_objects"] = growth_of_a_worker(records)
print(json.dumps(figures))
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads Linux's per-process memory")
def test_sharegpt4v_at_100k_entries_loads_compactly_and_is_shared_by_workers(tmp_path, record_property):
    count = 100_000
    path = tmp_path / "share-captioner_100k.json"
    path.write_text(json.dumps([sharegpt4v_entry(index) for index in range(count)]))
    # The images stay packed, as downloaded: COCO's zip, LCS's zip, SAM's tars inside their folder.
    root = tmp_path / "data"
    (root / "coco").mkdir(parents=True)
    (root / "llava/llava_pretrain").mkdir(parents=True)
    (root / "sam/images").mkdir(parents=True)
    images = [sharegpt4v_entry(index)["image"] for index in range(count)]
    with zipfile.ZipFile(root / "coco/train2017.zip", "w") as coco:
        for image in images[0::3]:
            coco.writestr(image.removeprefix("coco/"), image.encode())
    with zipfile.ZipFile(root / "llava/llava_pretrain/images.zip", "w") as lcs:
        for image in images[2::3]:
            lcs.writestr(image.removeprefix("llava/llava_pretrain/images/"), image.encode())
    for part in range(2):
        with tarfile.open(root / f"sam/images/sa_{part:06d}.tar", "w") as sam:
            for image in images[1::3][part::2]:
                add_member(sam, Path(image).name, image.encode())

    start = time.perf_counter()
    records = read_records(path, root)
    seconds = time.perf_counter() - start
    assert len(records) == count - 1000  # the first 1,000 are the ShareGPT4V-1k test split
    for index in (0, 1, 2, 50_000, count - 1001):
        entry = sharegpt4v_entry(index + 1000)
        record = records[index]
        assert record.image == root / entry["image"] and record.caption == entry["conversations"][1]["value"]
        assert record.member.read() == entry["image"].encode()  # found in its archive, read back exactly
    test_split = read_sharegpt4v_test_split(path, root)
    assert len(test_split) == 1000
    assert test_split[999].caption == sharegpt4v_entry(999)["conversations"][1]["value"]

    # Memory in a fresh process (a training process loads its records first thing)
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE_MEMORY, str(path), str(root)], capture_output=True, text=True, timeout=300
    )
    assert measured.returncode == 0, measured.stderr[-3000:]
    figures = json.loads(measured.stdout)
    mb = 2**20
    report(
        record_property,
        entries=count,
        json_mb=round(path.stat().st_size / mb, 1),
        load_s=round(seconds, 2),
        **{f"{name}_mb": round(value / mb, 1) for name, value in figures.items()},
    )
    assert figures["table"] < path.stat().st_size  # captions and paths, no per-record objects
    assert figures["load_peak_rss"] < 2 * figures["table"]  # never the whole file and its parsed objects at once
    assert figures["worker_growth_table"] < 0.25 * figures["worker_growth_objects"]  # shared, where objects are copied


def test_the_test_split_is_read_without_the_rest_of_the_file(tmp_path):
    entries = [sharegpt4v_entry(index) for index in range(1500)]
    text = json.dumps(entries, indent=1)
    cut = text.index('"id": "1200"')
    (tmp_path / "share.json").write_text(text[:cut] + '"id": 12 oops')  # broken after entry 1,199
    test_split = read_sharegpt4v_test_split(tmp_path / "share.json", tmp_path)
    assert [record.caption for record in test_split] == [e["conversations"][1]["value"] for e in entries[:1000]]
    line = text[:cut].count("\n") + 1
    with pytest.raises(ValueError, match=rf"share\.json:{line}: not valid JSON \(Expecting ',' delimiter"):
        read_records(tmp_path / "share.json")


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 24])
def test_json_lists_read_in_chunks_give_what_json_gives(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(text_files, "_JSON_CHUNK", chunk)
    entries = [
        {"image": f"x/{i}.jpg", "n": [1.5e-3, -25, True, None], "s": 'é 漢 😀 \\ "q"\n\u2028'} for i in range(40)
    ]
    for indent, ascii_only in ((None, True), (2, False)):
        (tmp_path / "a.json").write_text(json.dumps(entries, indent=indent, ensure_ascii=ascii_only))
        assert list(text_files.json_list(tmp_path / "a.json", "entries")) == entries
    for text in ("[1, 2,]", "[1 2]", "[1, 2] x", '[{"a":\n 1,,}]', '[1,\n\n  {"b": tru}]', "[", '["a\nb"]', '["abc'):
        (tmp_path / "b.json").write_text(text)
        with pytest.raises(json.JSONDecodeError) as expected:
            json.loads(text)
        error = expected.value
        with pytest.raises(ValueError) as got:
            list(text_files.json_list(tmp_path / "b.json", "entries"))
        assert (
            str(got.value)
            == f"{tmp_path / 'b.json'}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno})."
        )
    (tmp_path / "c.json").write_bytes(b'["a",\n"b\xe9"]')
    with pytest.raises(ValueError, match=r"c\.json:2: not UTF-8 text \(byte 0xe9\)"):
        list(text_files.json_list(tmp_path / "c.json", "entries"))


# ----------------------------------------------------------------------------------------------------------
# Images straight from their archives
# ----------------------------------------------------------------------------------------------------------


def write_packed(root: Path, images: dict[str, bytes]) -> None:
    """`images` as ShareGPT4V's downloads pack them: COCO's zip (deflated, `train2017/` inside), LCS's zip (stored,
    no folder inside), SAM's tars inside `sam/images/`; `wikiart/images/` unpacked."""
    (root / "coco").mkdir(parents=True)
    (root / "llava/llava_pretrain").mkdir(parents=True)
    (root / "sam/images").mkdir(parents=True)
    with zipfile.ZipFile(root / "coco/train2017.zip", "w", zipfile.ZIP_DEFLATED) as coco:
        for name, payload in images.items():
            if name.startswith("coco/"):
                coco.writestr(name.removeprefix("coco/"), payload)
    with zipfile.ZipFile(root / "llava/llava_pretrain/images.zip", "w", zipfile.ZIP_STORED) as lcs:
        for name, payload in images.items():
            if name.startswith("llava/"):
                lcs.writestr(name.removeprefix("llava/llava_pretrain/images/"), payload)
    sam = sorted(name for name in images if name.startswith("sam/"))
    for part in range(2):
        with tarfile.open(root / f"sam/images/sa_{part:06d}.tar", "w") as archive:
            for name in sam[part::2]:
                add_member(archive, "./" + Path(name).name, images[name])
                add_member(archive, "./" + Path(name).with_suffix(".json").name, b"{}")  # SAM's masks
    for name, payload in images.items():
        if name.startswith("wikiart/"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(payload)


def packed_dataset(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    names = [
        "coco/train2017/000000000009.jpg", "coco/train2017/000000000025.jpg",
        "llava/llava_pretrain/images/00000/000000010.jpg", "llava/llava_pretrain/images/00453/004539375.jpg",
        "sam/images/sa_1.jpg", "sam/images/sa_2.jpg", "sam/images/sa_3.jpg",
        "wikiart/images/a-painting.jpg",
    ]  # fmt: skip
    images = {name: png(index) for index, name in enumerate(names)}
    write_packed(tmp_path / "packed", images)
    for name, payload in images.items():  # the same images unpacked, for reference
        (tmp_path / "unpacked" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "unpacked" / name).write_bytes(payload)
    rows = [
        {"image": name, "caption": f"A long caption of image {index}. It goes on."} for index, name in enumerate(names)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path / "packed", tmp_path / "unpacked", names


def test_images_are_read_straight_from_zip_and_tar_archives(tmp_path):
    packed, unpacked, names = packed_dataset(tmp_path)
    records = read_records(tmp_path / "train.jsonl", packed)
    assert [record.member is None for record in records] == [name.startswith("wikiart/") for name in names]
    check_images_exist(records, tmp_path / "train.jsonl")
    for record, name in zip(records, names, strict=True):
        assert record.image == packed / name
        with Image.open(unpacked / name) as expected:
            assert np.array_equal(np.asarray(read_image(record)), np.asarray(expected.convert("RGB"))), name
    builder = pixel_builder()
    from_archives = CaptionDataset(records, builder)
    from_files = CaptionDataset(read_records(tmp_path / "train.jsonl", unpacked), builder)
    for index in range(len(names)):
        assert torch.equal(from_archives[index]["image"], from_files[index]["image"])


def test_an_image_missing_from_its_archive_or_damaged_in_it_is_skipped_by_name(tmp_path):
    packed, _, names = packed_dataset(tmp_path)
    rows = [{"image": name, "caption": "A caption."} for name in [*names, "coco/train2017/absent.jpg"]]
    (tmp_path / "more.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    # damage the stored bytes of one LCS image in its zip: its CRC no longer matches
    lcs = packed / "llava/llava_pretrain/images.zip"
    with zipfile.ZipFile(lcs) as archive:
        info = archive.getinfo("00453/004539375.jpg")
    content = bytearray(lcs.read_bytes())
    content[info.header_offset + 30 + len(info.filename) + 40] ^= 0xFF
    lcs.write_bytes(bytes(content))
    records = read_records(tmp_path / "more.jsonl", packed)
    reasons = {}
    for record in records:
        try:
            read_image(record)
        except UnusableSample as problem:
            reasons[record.image.relative_to(packed).as_posix()] = problem.reason
    assert reasons == {
        "llava/llava_pretrain/images/00453/004539375.jpg": "unreadable",
        "coco/train2017/absent.jpg": "missing",
    }
    dataset = CaptionDataset(records, pixel_builder())
    assert dataset[3]["skipped"] == [(str(packed / names[3]), "unreadable")]  # replaced by the next image


def test_a_compressed_or_damaged_archive_is_named(tmp_path):
    (tmp_path / "sam").mkdir()
    with tarfile.open(tmp_path / "sam/images.tar", "w:gz") as archive:
        add_member(archive, "sa_1.jpg", png(0))
    (tmp_path / "a.jsonl").write_text(json.dumps({"image": "sam/images/sa_1.jpg", "caption": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"sam/images\.tar: not a readable tar archive .*uncompressed tar"):
        read_records(tmp_path / "a.jsonl")
    shutil.rmtree(tmp_path / "sam")
    (tmp_path / "sam").mkdir()
    (tmp_path / "sam/images.zip").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match=r"sam/images\.zip: not a readable zip archive"):
        read_records(tmp_path / "a.jsonl")


def test_training_on_packed_images_equals_training_on_unpacked_ones(tmp_path):
    packed, unpacked, _ = packed_dataset(tmp_path)
    shutil.copy(write_dataset(tmp_path / "d", count=1) / "tiny.json", tmp_path)
    losses = []
    for root in (packed, unpacked):
        output = tmp_path / f"run-{root.name}"
        config = config_for(tmp_path, output, images_root=str(root), batch_size=4, epochs=2, save_every=100)
        train(config)
        losses.append(losses_of(output))
    assert losses[0] == losses[1] and sorted(losses[0]) == [1, 2, 3, 4]
