"""UTF-8 text files read a line or a chunk at a time: JSON lines, CSV, whole JSON files and JSON lists streamed an item
at a time; every error names the file and line (`data/train.jsonl:3: ...`)."""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path


def is_blank(path: Path) -> bool:
    """Whether the file holds nothing but white space (and a byte-order mark), reading no more than it must."""
    with path.open("rb") as handle:
        chunk = handle.read(1 << 16).removeprefix(codecs.BOM_UTF8)
        while chunk:
            if chunk.strip():
                return False
            chunk = handle.read(1 << 16)
    return True


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(number, text) of each line of a UTF-8 file, read a line at a time; a leading byte-order mark (as Excel
    writes) is dropped, and a byte that is not UTF-8 is named with its line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):  # split at b"\n" only: JSON strings may hold U+2028
            if number == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{line[error.start]:02x}); save the file as UTF-8."
                ) from None
            yield number, text


def _read_text(path: Path) -> str:
    """The whole file as UTF-8 text, with the `read_lines` errors."""
    return "".join(text for _, text in read_lines(path))


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(`file:line`, object) of each non-blank line of a JSON-lines file, read a line at a time."""
    for number, line in read_lines(path):
        if line.strip():
            row = _parse_json(line.removesuffix("\n"), path, number)
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected an object per line, found a {type(row).__name__}.")
            yield f"{path}:{number}", row


def csv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(`file:line`, row) of each row of a CSV file whose header names an `image` and a `caption` column."""
    reader = csv.DictReader(text for _, text in read_lines(path))
    try:
        if not {"image", "caption"} <= set(reader.fieldnames or ()):
            raise ValueError(
                f"{path}:1: the header {reader.fieldnames} lacks an `image` or `caption` column; the first line "
                "names the columns, e.g. `image,caption,short_caption`."
            )
        for row in reader:
            yield f"{path}:{reader.line_num}", row
    except csv.Error as error:
        raise ValueError(f"{path}:{reader.line_num}: not valid CSV ({error}).") from None


def read_json_file(path: Path) -> object:
    """A whole JSON file (a COCO captions file, a Karpathy split); an error names the file and the line."""
    return _parse_json(_read_text(path), path)


def _parse_json(text: str, path: Path, line: int | None = None) -> object:
    """`text` parsed as JSON; an error names the file's line (`line` for a JSONL line, else the error's)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _json_error(path, line or error.lineno, error.msg, error.colno) from None


def _json_error(path: Path, line: int, message: str, column: int) -> ValueError:
    return ValueError(f"{path}:{line}: not valid JSON ({message}, column {column}).")


_JSON_CHUNK = 1 << 20  # bytes read at a time from a JSON list
_JSON_MARGIN = 64  # a value parsed this close to the text's end may go on in the next chunk ("1." of "1.5e3")
_JSON_DECODER = json.JSONDecoder()
_NOT_JSON_SPACE = re.compile(r"[^ \t\n\r]")


class _JsonText:
    """A JSON file's text read a chunk at a time from `position` on, with the line and column of any position."""

    def __init__(self, handle, path: Path):
        self.handle, self.path = handle, path
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text, self.position = "", 0
        self.line, self.column = 1, 1  # of text[0]
        self.lines_read = 0  # newlines in the bytes read, for a decoding error's line

    def more(self) -> bool:
        """Drop the text before `position` and append the next chunk; False, the text untouched, at the end."""
        chunk = self.handle.read(_JSON_CHUNK)
        try:
            decoded = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as error:
            line = self.lines_read + error.object[: error.start].count(b"\n") + 1
            raise ValueError(
                f"{self.path}:{line}: not UTF-8 text (byte 0x{error.object[error.start]:02x}); save the file as UTF-8."
            ) from None
        if not chunk:
            return False
        self.lines_read += chunk.count(b"\n")
        self.line, self.column = self.where(self.position)
        self.text, self.position = self.text[self.position :] + decoded, 0
        return True

    def where(self, position: int) -> tuple[int, int]:
        """(line, column) of text[position]."""
        newlines = self.text.count("\n", 0, position)
        if not newlines:
            return self.line, self.column + position
        return self.line + newlines, position - self.text.rfind("\n", 0, position)

    def peek(self) -> str:
        """The next character that is not white space ('' at the end of the file), `position` moved to it."""
        while True:
            found = _NOT_JSON_SPACE.search(self.text, self.position)
            if found:
                self.position = found.start()
                return found.group()
            self.position = len(self.text)
            if not self.more():
                return ""

    def value(self) -> object:
        """The JSON value at `position`, `position` moved past it."""
        while True:
            try:
                value, end = _JSON_DECODER.raw_decode(self.text, self.position)
            except json.JSONDecodeError as error:
                # cut off by the chunk's end: inside a string, or just before it (a literal, an escape)
                cut = error.msg.startswith("Unterminated string") or error.pos > len(self.text) - _JSON_MARGIN
                if cut and self.more():
                    continue
                line, column = self.where(error.pos)
                raise _json_error(self.path, line, error.msg, column) from None
            if end > len(self.text) - _JSON_MARGIN and self.more():
                continue
            self.position = end
            return value

    def error(self, message: str) -> ValueError:
        line, column = self.where(self.position)
        return _json_error(self.path, line, message, column)


def json_list(path: Path, what: str) -> Iterator[object]:
    """The items of a JSON list, parsed one at a time from a file read in chunks: memory holds one chunk and one
    item, never the whole file (ShareGPT4V's is 1.5 GB)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    with path.open("rb") as handle:
        text = _JsonText(handle, path)
        if text.peek() != "[":
            value = read_json_file(path)  # not a list: the file's own parse error, or what it holds
            raise ValueError(f"{path}: expected a JSON list of {what}, found a {type(value).__name__}.")
        text.position += 1
        if text.peek() == "]":
            text.position += 1
        else:
            while True:
                yield text.value()
                separator = text.peek()
                if separator not in (",", "]"):
                    raise text.error("Expecting ',' delimiter")
                text.position += 1
                if separator == "]":
                    break
                text.peek()  # the next item's first character
        if text.peek():
            raise text.error("Extra data")
