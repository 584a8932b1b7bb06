"""LongCLIPTokenizer against open_clip's SimpleTokenizer, the reference CLIP tokenizer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
import transformers
from helpers.common import run_with_transformers4
from open_clip.tokenizer import SimpleTokenizer, basic_clean, bytes_to_unicode, default_bpe, whitespace_clean

from longclip_diffusers import tokenizer as tokenizer_module
from longclip_diffusers.tokenizer import DEFAULT_MAX_LENGTH, LongCLIPTokenizer, clean_text, write_clip_vocab

SOT, EOT = 49406, 49407

# Realistic long Stable Diffusion prompts, each exercising something CLIP's cleaning or BPE must get right.
CAFE = (
    "A cozy Parisian café at dusk, warm golden light spilling onto wet cobblestones, a naïve young painter "
    "named Zoë sketching a crème brûlée at a tiny marble table, her beret tilted, a Renoir-like palette of "
    "soft pinks and ochres, steam curling from an espresso cup, reflections in the rain puddles, bokeh from "
    "the street lamps, shot on Kodak Portra 400, 35mm, shallow depth of field, highly detailed"
)
EMOJI = (
    "kawaii cat astronaut 🐱🚀 floating between pastel planets 🪐✨, tiny glowing stars 🌟 and a crescent "
    "moon 🌙, candy-colored nebula clouds, chibi proportions, big sparkly eyes 😻, soft cel shading, "
    "sticker design with a thick white outline, vector art, trending on artstation, 4k wallpaper 💖"
)
QUOTES = (
    "A vintage 1950s movie poster titled ‘The Last Lighthouse’ with the tagline “Some lights never go out”, "
    "a lone keeper in a yellow raincoat climbing a spiral staircase, stormy sea crashing against the rocks, "
    "lithograph texture, faded teal and orange palette, hand-lettered title, the studio’s logo in the "
    "corner, it’s dramatic and moody, halftone dots, worn paper edges"
)
ENTITIES = (
    "Product photo of a ceramic coffee mug printed with &quot;Coffee &amp; Code&quot;, sitting on a walnut "
    "desk next to a mechanical keyboard, a sticky note that reads &lt;b&gt;SHIP IT&lt;/b&gt;, morning "
    "sunlight through blinds, it&#39;s a minimalist developer&#39;s workspace, Rock &amp;amp; Roll vinyl "
    "on the wall, 50mm lens, f/1.8, crisp commercial lighting"
)
WHITESPACE = (
    "portrait of an old fisherman,\n\n   weathered skin,\t\tdeep wrinkles,     salt-and-pepper beard,\r\n"
    "wool knit cap,\t  piercing blue eyes   looking past the camera,\n\n\n  harbour in the background,"
    "  dramatic Rembrandt lighting,\t\t\toil painting,   visible brush strokes,  muted earth tones,\n"
    "\t85mm portrait lens,    f/1.4,\n  film grain,\t\tnational geographic style  \n\n"
)
MOJIBAKE = (
    "A rustic cafÃ© sign hanging above a bakery window in a small French village, hand-painted letters "
    "reading â€œPÃ¢tisserie du Coinâ€\x9d, croissants and pain au chocolat stacked behind the glass, "
    "flower boxes with red geraniums, morning fog, watercolor illustration, loose ink lines, storybook style"
)
CJK = (
    "Traditional Japanese garden in Kyoto 京都, 桜 cherry blossoms falling on a koi pond, a red 鳥居 torii "
    "gate, stone lanterns covered in moss, 東京タワー glowing far away, 中国山水画 ink wash style, "
    "Korean 한옥 roof tiles, misty mountains, serene spring morning, ukiyo-e woodblock print"
)
PUNCTUATION = (
    "(masterpiece:1.2), best quality!!!, ultra-detailed, 8k uhd, a knight in ornate silver armor!! standing "
    "on a cliff -- epic fantasy -- dragon circling overhead?!, O'Brien's banner flapping, don't lose the "
    "details: engraved runes, chainmail, fur cloak; cinematic lighting... volumetric fog, [[sharp focus]], "
    "{golden hour}, #fantasy @artist ~ 100% awesome"
)
CYBERPUNK = (
    "Ultra-wide cinematic shot of a neon-drenched cyberpunk megacity at night, rain-slicked streets reflecting "
    "pink and cyan holographic billboards, a street food vendor under a flickering awning, steam rising from "
    "manholes, crowds with glowing umbrellas, flying cars weaving between brutalist skyscrapers, dense "
    "cables overhead, Blade Runner 2049 color grading, anamorphic lens flare, 24mm, f/2.8, high contrast"
)
LONG = " ".join(
    [
        "An enormous, intricately detailed fantasy landscape painting at golden hour, seen from a high cliff:",
        "in the foreground, an ancient moss-covered stone bridge arches over a roaring turquoise river, with",
        "wildflowers (purple lupines, orange poppies, white daisies) growing between the cracked flagstones;",
        "a lone traveler in a tattered crimson cloak leans on a gnarled walking staff, a small fox at her feet.",
        "In the middle ground, terraced rice fields climb the hillsides toward a village of timber-framed",
        "houses with steep slate roofs, smoke curling from chimneys, lanterns already glowing in the windows,",
        "a windmill turning slowly, and a market square crowded with colorful tents and tiny figures.",
        "Beyond them, a vast emerald forest stretches to a glittering lake where sailboats drift, and on an",
        "island in the lake stands a white marble castle with seven slender towers, blue banners snapping",
        "in the wind. In the far distance, snow-capped mountains pierce a sky streaked with pink, gold and",
        "violet clouds, a flock of cranes flying in a V, two pale moons rising, and a waterfall spilling from",
        "a floating rock island trailing vines. Painted in the style of Albert Bierstadt and Studio Ghibli,",
        "luminous atmospheric perspective, god rays, rich saturated colors, fine brushwork, 8k resolution,",
        "masterpiece, award-winning matte painting, extremely detailed, sharp focus, epic scale, wide angle",
    ]
)
CORPUS = {
    "cafe": CAFE,
    "emoji": EMOJI,
    "quotes": QUOTES,
    "entities": ENTITIES,
    "whitespace": WHITESPACE,
    "mojibake": MOJIBAKE,
    "cjk": CJK,
    "punctuation": PUNCTUATION,
    "cyberpunk": CYBERPUNK,
    "long": LONG,
}
CLEAN_TEXT = "a photo of an astronaut riding a horse on mars, highly detailed, 8k"  # cleaning changes nothing


@pytest.fixture(scope="module")
def open_clip_tok() -> SimpleTokenizer:
    return SimpleTokenizer(context_length=DEFAULT_MAX_LENGTH)


@pytest.fixture(scope="module")
def tok_zero() -> LongCLIPTokenizer:
    return LongCLIPTokenizer.from_clip_bpe(pad_token="!")


@pytest.fixture(scope="module")
def tok() -> LongCLIPTokenizer:
    return LongCLIPTokenizer.from_clip_bpe()


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip_vocab")
    write_clip_vocab(folder)
    return folder


@pytest.fixture(scope="module")
def saved_dir(tok, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved")
    tok.save_pretrained(folder)
    return folder


def ids_248(tokenizer, texts) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=248, truncation=True, return_tensors="pt").input_ids


def test_corpus_is_long_and_the_long_prompt_overflows(open_clip_tok):
    lengths = {name: len(open_clip_tok.encode(text)) for name, text in CORPUS.items()}
    assert all(60 <= n <= 300 for n in lengths.values()), lengths
    assert lengths["long"] > 246  # more than fits between <|startoftext|> and <|endoftext|>


def test_write_clip_vocab_reproduces_clips_vocabulary(vocab_dir, open_clip_tok):
    vocab = json.loads((vocab_dir / "vocab.json").read_text(encoding="utf-8"))
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    assert vocab == {renamed.get(token, token): i for token, i in open_clip_tok.encoder.items()}
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == SOT and vocab["<|endoftext|>"] == EOT
    lines = (vocab_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert [tuple(line.split()) for line in lines[1:]] == sorted(
        open_clip_tok.bpe_ranks, key=open_clip_tok.bpe_ranks.get
    )
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        assert lines[1:] == f.read().split("\n")[1:48895]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  The CafÃ©\t&amp;amp;  Bar\n", "the café & bar"),
        ("“Hi” &quot;there&quot; it&#39;s", '"hi" "there" it\'s'),
        ("<b> &amp;amp;amp;lt;", "<b> &amp;lt;"),  # ftfy leaves HTML-looking text alone: two unescapes only
        ("ZOË\u00a0\u2003naïve", "zoë naïve"),
    ],
)
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected
    assert clean_text(raw) == whitespace_clean(basic_clean(raw)).lower()  # open_clip's own cleaning


def test_clean_text_matches_open_clip_on_corpus():
    for text in CORPUS.values():
        assert clean_text(text) == whitespace_clean(basic_clean(text)).lower()


@pytest.mark.parametrize("name", list(CORPUS))
def test_ids_equal_open_clip_with_zero_padding(tok_zero, open_clip_tok, name):
    ours = ids_248(tok_zero, CORPUS[name])
    assert ours.shape == (1, 248) and ours.dtype == torch.long
    assert torch.equal(ours, open_clip_tok(CORPUS[name]))


def test_batch_equals_open_clip_whole_tensor(tok_zero, open_clip_tok):
    texts = list(CORPUS.values())
    assert torch.equal(ids_248(tok_zero, texts), open_clip_tok(texts))


def test_overlong_prompt_is_truncated_like_open_clip(tok_zero, open_clip_tok):
    ours = ids_248(tok_zero, LONG)[0]
    full = [SOT, *open_clip_tok.encode(LONG)]
    assert ours[247] == EOT and (ours[:247] == torch.tensor(full[:247])).all()
    assert EOT not in ours[:247].tolist()


def test_default_pad_is_end_of_text(tok, open_clip_tok):
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == EOT
    assert tok.model_max_length == DEFAULT_MAX_LENGTH
    texts = list(CORPUS.values())
    ours, reference = ids_248(tok, texts), open_clip_tok(texts)
    for row, ref in zip(ours.tolist(), reference.tolist(), strict=True):
        end = ref.index(EOT) + 1
        assert row[:end] == ref[:end]
        assert row[end:] == [EOT] * (248 - end)
    assert (ours[:, 0] == SOT).all()
    assert (ours[-1] == EOT).sum() == 1  # the overlong prompt has no pad, only its closing EOT


def test_zero_pad_token(tok_zero):
    assert tok_zero.pad_token == "!" and tok_zero.pad_token_id == 0
    ids = ids_248(tok_zero, "a cat")[0].tolist()
    assert ids[:4] == [SOT, 320, 2368, EOT] and ids[4:] == [0] * 244


SPECIAL_AS_TEXT = "a cat <|endoftext|> on a mat <|startoftext|> at dusk, <end_of_text> <start_of_text>"


def test_special_token_names_in_a_prompt_are_ordinary_text(tok, tok_zero, vocab_dir, open_clip_tok, saved_dir):
    # The references read their own special-token names in the text as the special tokens: open_clip names
    # them <start_of_text> / <end_of_text>; OpenAI CLIP's tokenizer (the Long-CLIP reference's) and the plain
    # Hugging Face one name them <|startoftext|> / <|endoftext|>.
    cat, mat = open_clip_tok.encode("a cat"), open_clip_tok.encode("on a mat")
    assert open_clip_tok.encode("a cat <end_of_text> on a mat") == [*cat, EOT, *mat]
    assert open_clip_tok.encode("<start_of_text> a cat") == [SOT, *cat]
    plain = transformers.CLIPTokenizerFast.from_pretrained(vocab_dir)
    assert plain("a cat <|endoftext|> on a mat", add_special_tokens=False).input_ids == [*cat, EOT, *mat]

    # Ours never does (a typed end token would end the text for the pooled features): every name is split into
    # ordinary tokens, the ids the references give a name that is not theirs.
    for tokenizer in (tok, tok_zero, LongCLIPTokenizer.from_pretrained(saved_dir)):
        ids = tokenizer(SPECIAL_AS_TEXT).input_ids
        assert ids[0] == SOT and ids[-1] == EOT and SOT not in ids[1:-1] and EOT not in ids[1:-1]
        assert tokenizer("<|endoftext|>", add_special_tokens=False).input_ids == open_clip_tok.encode("<|endoftext|>")
        names = "<end_of_text> <start_of_text>"
        assert tokenizer(names, add_special_tokens=False).input_ids == plain(names, add_special_tokens=False).input_ids
        as_text = [open_clip_tok.decoder[i] for i in open_clip_tok.encode("a <|endoftext|>")]
        assert tokenizer.tokenize("a <|endoftext|>") == as_text


@pytest.mark.parametrize("text", [QUOTES, ENTITIES, MOJIBAKE])
def test_plain_hf_tokenizer_differs_and_cleaning_fixes_it(vocab_dir, tok, open_clip_tok, text):
    plain = transformers.CLIPTokenizer.from_pretrained(vocab_dir, model_max_length=248)
    reference = [SOT, *open_clip_tok.encode(text), EOT]
    assert plain(text).input_ids != reference  # HF's fast CLIP tokenizer does not clean
    assert plain(clean_text(text)).input_ids == reference
    assert tok(text).input_ids == reference


def test_plain_hf_tokenizer_with_bang_pad_splits_exclamation_marks(vocab_dir, tok_zero, open_clip_tok):
    text = "wow!!! a knight in silver armor!"
    plain = transformers.CLIPTokenizer.from_pretrained(vocab_dir, pad_token="!")
    reference = [SOT, *open_clip_tok.encode(text), EOT]
    assert plain(text).input_ids != reference  # "!" registered as a special token: every "!" becomes id 0
    assert tok_zero(text).input_ids == reference


def test_tokenize_encode_and_batch_also_clean(tok, open_clip_tok):
    text = "“Coffee &amp; Code” at the cafÃ©"
    content = open_clip_tok.encode(text)
    assert tok.tokenize(text) == [open_clip_tok.decoder[i] for i in content]
    assert tok.encode(text) == [SOT, *content, EOT]
    batch = tok([text, QUOTES]).input_ids
    assert batch == [[SOT, *content, EOT], [SOT, *open_clip_tok.encode(QUOTES), EOT]]


def test_text_is_cleaned_exactly_once(tok, open_clip_tok):
    text = "x < y &amp;amp;amp;"  # clean_text is not idempotent on this
    assert clean_text(clean_text(text)) != clean_text(text)
    expected = [SOT, *open_clip_tok.encode(text), EOT]
    assert tok(text).input_ids == expected
    assert tok([text]).input_ids == [expected]
    assert tok.encode(text) == expected


def test_pretokenized_words_are_not_cleaned(tok, vocab_dir):
    words = ["Rock", "&amp;", "Roll"]
    plain = transformers.CLIPTokenizer.from_pretrained(vocab_dir)
    ours = tok(words, is_split_into_words=True).input_ids
    assert ours == plain(words, is_split_into_words=True).input_ids
    assert ours != tok("Rock &amp; Roll").input_ids


def test_save_pretrained_loads_as_plain_clip_tokenizer(tok, saved_dir, open_clip_tok):
    config = json.loads((saved_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "CLIPTokenizer" and config["model_max_length"] == 248
    assert not [p.name for p in saved_dir.iterdir() if p.name.startswith("tmp")]  # atomic rewrite left nothing
    for loaded in (
        transformers.CLIPTokenizer.from_pretrained(saved_dir),
        transformers.AutoTokenizer.from_pretrained(saved_dir),
    ):
        assert type(loaded) is transformers.CLIPTokenizerFast
        assert loaded.model_max_length == 248
        assert loaded.pad_token == "<|endoftext|>" and loaded.pad_token_id == EOT
        assert ids_248(loaded, CLEAN_TEXT).tolist() == ids_248(tok, CLEAN_TEXT).tolist()
    reloaded = LongCLIPTokenizer.from_pretrained(saved_dir)
    assert type(reloaded) is LongCLIPTokenizer and reloaded.model_max_length == 248
    assert reloaded(MOJIBAKE).input_ids == [SOT, *open_clip_tok.encode(MOJIBAKE), EOT]


def test_saved_bang_pad_is_preserved(tok_zero, tmp_path, open_clip_tok):
    tok_zero.save_pretrained(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.pad_token == "!" and loaded.pad_token_id == 0
    assert ids_248(loaded, CLEAN_TEXT).tolist() == ids_248(tok_zero, CLEAN_TEXT).tolist()
    bangs = "wow!!! a knight in silver armor!"  # split_special_tokens is saved: "!" stays ordinary text
    assert loaded(bangs).input_ids == [SOT, *open_clip_tok.encode(bangs), EOT]


def test_saved_folder_and_tokenizer_work_in_transformers4(saved_dir, tok, open_clip_tok):
    code = f"""
import json, transformers
assert transformers.__version__.startswith("4."), transformers.__version__
from longclip_diffusers.tokenizer import LongCLIPTokenizer
plain = transformers.AutoTokenizer.from_pretrained({str(saved_dir)!r})
ours = LongCLIPTokenizer.from_clip_bpe(pad_token="!")
texts = {list(CORPUS.values())!r}
print(json.dumps({{
    "class": type(plain).__name__,
    "model_max_length": plain.model_max_length,
    "pad_token": plain.pad_token,
    "plain_ids": plain({CLEAN_TEXT!r}, padding="max_length", max_length=248).input_ids,
    "ours_single": [ours(t, padding="max_length", max_length=248, truncation=True).input_ids for t in texts],
    "ours_batch": ours(texts, padding="max_length", max_length=248, truncation=True).input_ids,
    "ours_tokenize": ours.tokenize({QUOTES!r}),
}}))
"""
    result = json.loads(run_with_transformers4(code).strip().splitlines()[-1])
    assert result["class"] == "CLIPTokenizerFast"
    assert result["model_max_length"] == 248 and result["pad_token"] == "<|endoftext|>"
    assert result["plain_ids"] == ids_248(tok, CLEAN_TEXT)[0].tolist()
    reference = open_clip_tok(list(CORPUS.values())).tolist()
    assert result["ours_single"] == reference
    assert result["ours_batch"] == reference
    assert result["ours_tokenize"] == [open_clip_tok.decoder[i] for i in open_clip_tok.encode(QUOTES)]


def test_from_pretrained_builds_bpe_for_weights_only_sources(tmp_path, open_clip_tok):
    (tmp_path / "model.pt").write_bytes(b"not really a checkpoint")
    expected = open_clip_tok(ENTITIES)
    for source in (None, tmp_path, tmp_path / "model.pt", str(tmp_path / "model.pt")):
        loaded = LongCLIPTokenizer.from_pretrained(source, pad_token="!")
        assert loaded.model_max_length == 248
        assert torch.equal(ids_248(loaded, ENTITIES), expected)
    assert LongCLIPTokenizer.from_pretrained(tmp_path, model_max_length=77).model_max_length == 77


def test_from_pretrained_loads_tokenizer_subfolder(tok_zero, tmp_path, open_clip_tok):
    tok_zero.save_pretrained(tmp_path / "tokenizer")  # pad "!", as SDXL's second tokenizer
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    config_file = tmp_path / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(json.dumps({**config, "model_max_length": 77}), encoding="utf-8")
    for loaded in (
        LongCLIPTokenizer.from_pretrained(tmp_path),
        LongCLIPTokenizer.from_pretrained(tmp_path, subfolder="tokenizer"),
    ):
        assert type(loaded) is LongCLIPTokenizer
        assert loaded.pad_token == "!" and loaded.model_max_length == 77  # the saved values, not defaults
        assert loaded(QUOTES).input_ids == [SOT, *open_clip_tok.encode(QUOTES), EOT]
    overridden = LongCLIPTokenizer.from_pretrained(tmp_path, model_max_length=248, pad_token="<|endoftext|>")
    assert overridden.model_max_length == 248 and overridden.pad_token_id == EOT


@pytest.mark.parametrize("unset", [int(1e30), 1e30])
def test_from_pretrained_replaces_unset_saved_length(tok, tmp_path, unset):
    tok.save_pretrained(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(json.dumps({**config, "model_max_length": unset}), encoding="utf-8")
    assert transformers.CLIPTokenizer.from_pretrained(tmp_path).model_max_length > 100_000
    assert LongCLIPTokenizer.from_pretrained(tmp_path).model_max_length == 248


def test_from_pretrained_missing_path(tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such" / "longclip-L.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)) as info:
        LongCLIPTokenizer.from_pretrained(missing)
    assert "\n" not in str(info.value)
    monkeypatch.chdir(tmp_path)
    for relative in ("./checkpoints/longclip", "longclip-L.pt"):  # local-looking: never sent to the Hub
        with pytest.raises(FileNotFoundError, match=relative.removeprefix("./")):
            LongCLIPTokenizer.from_pretrained(relative)
    with pytest.raises(FileNotFoundError, match="nope"):
        LongCLIPTokenizer.from_pretrained(tmp_path, subfolder="nope")


def test_from_pretrained_resolves_hub_ids_through_hub_module(tok, tmp_path, monkeypatch):
    tok.save_pretrained(tmp_path / "tokenizer")
    calls = []

    def resolve(source, *, subfolder=None, revision=None):
        calls.append((source, subfolder, revision))
        return tmp_path / subfolder

    monkeypatch.setattr(tokenizer_module, "resolve", resolve)
    loaded = LongCLIPTokenizer.from_pretrained("someone/longclip-sd15", subfolder="tokenizer", revision="v1")
    assert calls == [("someone/longclip-sd15", "tokenizer", "v1")]
    assert type(loaded) is LongCLIPTokenizer and loaded.model_max_length == 248


@pytest.mark.parametrize("bad", [2, 0, -248, 248.0, "248", True])
def test_bad_model_max_length(tmp_path, bad):
    for build in (
        lambda: LongCLIPTokenizer.from_pretrained(None, model_max_length=bad),
        lambda: LongCLIPTokenizer.from_pretrained(tmp_path, model_max_length=bad),
        lambda: LongCLIPTokenizer.from_clip_bpe(model_max_length=bad),
    ):
        with pytest.raises(ValueError, match="model_max_length must be an int >= 3"):
            build()


def test_the_vocabulary_built_without_importing_open_clip_is_open_clips(open_clip_tok):
    """`clip_vocab` reads open_clip's BPE file with its own byte map: the same tokens, ids and merges."""
    vocab, merges = tokenizer_module.clip_vocab()
    assert tokenizer_module._byte_characters() == list(bytes_to_unicode().values())
    reference = {token: i for token, i in open_clip_tok.encoder.items() if not token.endswith("_of_text>")}
    assert {token: i for token, i in vocab.items() if not token.endswith("text|>")} == reference
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (
        open_clip_tok.encoder["<start_of_text>"],
        open_clip_tok.encoder["<end_of_text>"],
    )  # open_clip names CLIP's special tokens its own way
    assert {tuple(merge.split()): rank for rank, merge in enumerate(merges)} == open_clip_tok.bpe_ranks
