"""CLIP's tokenizer at Long-CLIP's length: CLIP's BPE (from the file open_clip ships) and CLIP's text cleaning."""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import inspect
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import ftfy

# diffusers loads a pipeline component of a non-transformers library by checking it against the base classes
# that library's module exposes by name: this name lets a saved pipeline load its LongCLIPTokenizer back.
from transformers import (
    CLIPTextConfig,
    CLIPTokenizerFast,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,  # noqa: F401
)

from .atomic import atomic_write
from .checkpoint import CheckpointError
from .constants import CLIP_BOS_TOKEN, CLIP_EOS_TOKEN, CLIP_PAD_TOKEN, LONG_CLIP_POSITIONS
from .hub import WEIGHT_SUFFIXES, resolve
from .weights_files import text_positions

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_LENGTH", "LongCLIPTokenizer", "check_pair", "clean_text", "write_clip_vocab"]

DEFAULT_MAX_LENGTH = LONG_CLIP_POSITIONS
_MAX_SANE_LENGTH = 100_000  # saved configs use 1e30-like values to mean "unset"
# transformers 4.x fast tokenizers route every call through `_batch_encode_plus`; 5.x through `_encode_plus`.
_BATCH_IS_CHOKE_POINT = hasattr(CLIPTokenizerFast, "_batch_encode_plus")
# transformers 5.x builds a CLIP tokenizer from a vocabulary and merges in memory; 4.x only from files.
_BUILDS_FROM_MEMORY = "merges" in inspect.signature(CLIPTokenizerFast.__init__).parameters


def clean_text(text: str) -> str:
    """CLIP's cleaning before BPE: fix mojibake, unescape HTML twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _clean_inputs(value: Any) -> Any:
    """`clean_text` on every string in a text, a pair or a batch; anything else passes through."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_clean_inputs(item) for item in value)
    return value


def _byte_characters() -> list[str]:
    """The character byte-level BPE gives each of the 256 bytes: printable Latin-1 bytes stand for themselves,
    the others take the characters from U+0100 on, in byte order; listed printable bytes first."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # Latin-1 less blanks and controls
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + n) for n in range(len(others))]


@functools.cache
def clip_vocab() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (token -> id) and BPE merges ("a b"), from the BPE file open_clip ships.

    Read once per process; open_clip (slow to import: it imports timm) is located, not imported.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ImportError("CLIP's BPE vocabulary comes with open_clip: `pip install open_clip_torch`.")
    with gzip.open(Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz", "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = _byte_characters()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += [CLIP_BOS_TOKEN, CLIP_EOS_TOKEN]  # ids CLIP_BOS_TOKEN_ID, CLIP_EOS_TOKEN_ID
    return {token: i for i, token in enumerate(tokens)}, merges


def write_clip_vocab(folder: str | Path) -> None:
    """Write CLIP's vocabulary as Hugging Face `vocab.json` + `merges.txt`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _check_max_length(model_max_length: Any) -> None:
    if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 3:
        raise ValueError(
            f"model_max_length must be an int >= 3 (start token, one text token, end token), got "
            f"{model_max_length!r}; pass e.g. model_max_length={DEFAULT_MAX_LENGTH} (Long-CLIP) or 77 (CLIP)."
        )


def tokenizer_folder(folder: Path) -> Path:
    """The folder holding the tokenizer of the text encoder in `folder`: a diffusers `text_encoder[_2]/` has it
    in the `tokenizer[_2]/` beside it (when there), any other folder in itself."""
    if folder.name.startswith("text_encoder"):
        sibling = folder.with_name(folder.name.replace("text_encoder", "tokenizer", 1))
        if sibling.is_dir():
            return sibling
    return folder


def _has_tokenizer_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


class LongCLIPTokenizer(CLIPTokenizerFast):
    """CLIP's tokenizer with Long-CLIP's 248-token context; gives the ids of OpenAI CLIP / open_clip.

    Every text is cleaned like CLIP cleans it (`clean_text`) before BPE, which the plain Hugging Face CLIP
    tokenizer skips (curly quotes, `&amp;` or mojibake then get other ids). Special-token names typed in a
    prompt (`<|endoftext|>`, `<|startoftext|>`, open_clip's `<end_of_text>`) are split into ordinary tokens
    (`split_special_tokens=True`), where the reference tokenizers read their own names as the special ids: a
    typed end token would end the text for the pooled features. This also keeps a `"!"` pad token from
    splitting runs of `!`, which a plain Hugging Face tokenizer padding with `"!"` does.

    Padding: the default pad token is `<|endoftext|>` (id 49407), as in the SD 1.5 tokenizer, because the
    SD 1.5 UNet was trained on conditioning whose padding positions hold end-of-text tokens and it
    cross-attends to every position, pads included. `pad_token="!"` (id 0) reproduces open_clip, the
    Long-CLIP reference and SDXL's second tokenizer. Pooled features are the same either way: CLIP's text
    attention is causal and pooling reads the first end-of-text token, so later positions cannot affect it.
    """

    def __init__(
        self,
        *args: Any,
        pad_token: str = CLIP_PAD_TOKEN,
        model_max_length: int = DEFAULT_MAX_LENGTH,
        split_special_tokens: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args,
            pad_token=pad_token,
            model_max_length=model_max_length,
            split_special_tokens=split_special_tokens,
            **kwargs,
        )

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("padding") == "max_length":  # how stock diffusers pipelines tokenize a prompt
            warn_if_syntax_is_lost(text)
        return super().__call__(text, *args, **kwargs)

    # Clean exactly once, at the installed transformers version's single entry point: cleaning is not
    # idempotent ("x < y &amp;amp;amp;" -> "x < y &amp;" -> "x < y &").
    if _BATCH_IS_CHOKE_POINT:

        def _batch_encode_plus(self, batch_text_or_text_pairs: Any, *args: Any, **kwargs: Any) -> Any:
            if not kwargs.get("is_split_into_words", False):
                batch_text_or_text_pairs = _clean_inputs(batch_text_or_text_pairs)
            return super()._batch_encode_plus(batch_text_or_text_pairs, *args, **kwargs)

    else:

        def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any) -> Any:
            if not kwargs.get("is_split_into_words", False):
                text, text_pair = _clean_inputs(text), _clean_inputs(text_pair)
            return super()._encode_plus(text, text_pair, *args, **kwargs)

    @classmethod
    def from_clip_bpe(
        cls, model_max_length: int = DEFAULT_MAX_LENGTH, pad_token: str = CLIP_PAD_TOKEN
    ) -> LongCLIPTokenizer:
        """Build the tokenizer offline from the BPE file that open_clip ships: in memory with transformers 5,
        through a temporary vocabulary folder with 4.x."""
        _check_max_length(model_max_length)
        if _BUILDS_FROM_MEMORY:
            vocab, merges = clip_vocab()
            pairs = [tuple(merge.split()) for merge in merges]
            tokenizer = cls(vocab=dict(vocab), merges=pairs, model_max_length=model_max_length, pad_token=pad_token)
        else:
            with tempfile.TemporaryDirectory() as folder:
                write_clip_vocab(folder)
                tokenizer = super().from_pretrained(folder, model_max_length=model_max_length, pad_token=pad_token)
        tokenizer.name_or_path = "clip-bpe"  # not the deleted temporary folder
        return tokenizer

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        *,
        subfolder: str | None = None,
        model_max_length: int | None = None,
        pad_token: str | None = None,
        **kwargs: Any,
    ) -> LongCLIPTokenizer:
        """Load from a tokenizer folder (or its `tokenizer/` subfolder), a Hub id, or build CLIP's BPE.

        `None`, a folder without tokenizer files (e.g. only Long-CLIP weights) and a weights file
        (`.pt`, `.safetensors`, ...) all get CLIP's tokenizer built from open_clip's BPE file.
        `model_max_length` defaults to the position count of a text encoder saved in the same folder (or its
        `text_encoder/`), else to the saved value when it is sane, else 248.
        """
        if model_max_length is not None:
            _check_max_length(model_max_length)
        source = pretrained_model_name_or_path
        if source is None:
            return cls.from_clip_bpe(model_max_length or DEFAULT_MAX_LENGTH, pad_token or CLIP_PAD_TOKEN)
        path = resolve(source, subfolder=subfolder, revision=kwargs.pop("revision", None))
        if model_max_length is None and path.is_dir():
            # A text encoder stored beside the tokenizer decides the length: community Long-CLIP conversions
            # often ship CLIP's 77-token tokenizer config next to a 248-position encoder.
            model_max_length = text_positions(path)

        candidates = (path, path / "tokenizer") if path.is_dir() else ()
        folder = next((f for f in candidates if _has_tokenizer_files(f)), None)
        if folder is None:
            if path.is_file() and path.suffix not in WEIGHT_SUFFIXES:
                raise ValueError(f"{path} is neither a folder nor a weights file ({', '.join(WEIGHT_SUFFIXES)})")
            return cls.from_clip_bpe(model_max_length or DEFAULT_MAX_LENGTH, pad_token or CLIP_PAD_TOKEN)

        if model_max_length is not None:
            kwargs["model_max_length"] = model_max_length
        if pad_token is not None:
            kwargs["pad_token"] = pad_token
        kwargs.setdefault("split_special_tokens", True)  # a saved `false` would break CLIP parity
        try:
            tokenizer = super().from_pretrained(folder, **kwargs)
        except Exception as error:  # damaged files fail in transformers and tokenizers with any error type
            raise CheckpointError(
                f"{folder}: its tokenizer files cannot be read ({type(error).__name__}); restore or download them "
                "again."
            ) from None
        if tokenizer.model_max_length > _MAX_SANE_LENGTH:  # saved as "unset"
            tokenizer.model_max_length = DEFAULT_MAX_LENGTH
        _check_max_length(tokenizer.model_max_length)
        return tokenizer

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> tuple[str, ...]:
        """Save as a plain `CLIPTokenizer` folder that loads anywhere (transformers 4.x and 5.x)."""
        if kwargs.get("push_to_hub"):
            raise ValueError("push_to_hub is not supported here: save_pretrained(folder), then upload the folder.")
        files = super().save_pretrained(save_directory, *args, **kwargs)
        # vocab.json + merges.txt: what transformers 4.x's (Python) CLIPTokenizer reads, e.g. in diffusers pipelines.
        files = (*files, *self.backend_tokenizer.model.save(str(save_directory)))
        config_file = Path(next(f for f in files if str(f).endswith("tokenizer_config.json")))
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config.update(tokenizer_class="CLIPTokenizer", model_max_length=self.model_max_length)
        for loader_flag in ("is_local", "local_files_only"):  # transformers 5 saves these load arguments
            config.pop(loader_flag, None)
        atomic_write(config_file, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return files


def check_pair(tokenizer: PreTrainedTokenizerBase, text_config: CLIPTextConfig, where: str = "") -> None:
    """Refuse a tokenizer that does not fit a text encoder: unknown token ids, or a different length."""
    where = f"{where}: " if where else ""
    if len(tokenizer) > text_config.vocab_size:
        raise CheckpointError(
            f"{where}the tokenizer has {len(tokenizer)} tokens but the text encoder embeds only "
            f"{text_config.vocab_size}; this encoder was trained with another vocabulary. Use the tokenizer it "
            "was trained with (pass its folder) instead of CLIP's."
        )
    if tokenizer.model_max_length != text_config.max_position_embeddings:
        raise CheckpointError(
            f"{where}the tokenizer reads {tokenizer.model_max_length} tokens but the text encoder has "
            f"{text_config.max_position_embeddings} positions; load the tokenizer with "
            f"LongCLIPTokenizer.from_pretrained(..., model_max_length={text_config.max_position_embeddings})."
        )


_WARNED: set[str] = set()


def warn_if_syntax_is_lost(text: Any) -> None:
    """Warn, once per pipeline class, when a stock diffusers pipeline tokenizes a prompt with weighting syntax or
    `BREAK`, which it reads as plain text; the warning names the Long-CLIP class that honours them."""
    from .prompts.syntax import parse_weighted_prompt

    texts = [text] if isinstance(text, str) else text if isinstance(text, list) else []
    prompt = next(
        (prompt for prompt in texts if isinstance(prompt, str) and _has_syntax(prompt, parse_weighted_prompt)), None
    )
    if prompt is None:
        return
    frame = sys._getframe(1)
    for _ in range(8):  # the stock pipeline's encode_prompt is a few calls up
        frame = frame.f_back
        if frame is None:
            return
        owner = frame.f_locals.get("self")
        if type(owner).__module__.startswith("diffusers.") and hasattr(owner, "encode_prompt"):
            break
    else:
        return
    name = type(owner).__name__
    if name not in _WARNED:
        _WARNED.add(name)
        logger.warning(
            "%s reads weighting syntax and BREAK as plain text (%r); use LongCLIP%s "
            "(longclip_diffusers.pipelines.with_long_prompts(pipe)) to honour them.",
            name,
            prompt[:60],
            name,
        )


def _has_syntax(prompt: str, parse) -> bool:
    try:
        return any(weight != 1.0 for _, weight in parse(prompt))
    except ValueError:  # a weight out of range is syntax too
        return True
