"""Readers, one per input kind. Each streams `Raw` records with the file and line they came from.

A reader never drops anything silently: a line it cannot parse comes out as a `Raw` with `error`
set (it goes to quarantine with its line number), and a file it cannot read at all raises
`DataError` naming the file. Tabular readers check the header against the columns the config needs
before reading a single row.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunesmith.config import SourceSpec
from tunesmith.data import chat_formats, packaged
from tunesmith.data.raw import Raw
from tunesmith.errors import DataError

_BAD_BYTES = re.compile("[\udc00-\udcff]")  # what `ESCAPE_BYTES` leaves for undecodable bytes
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's `\ud83d` escape alone: valid JSON, not valid Unicode
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _escape_bytes(err: UnicodeError) -> tuple[str, int]:
    """`surrogateescape` for every byte: an undecodable UTF-16 unit (an unpaired surrogate) holds a byte
    under 0x80, which `surrogateescape` refuses, and the whole file failed with a UnicodeDecodeError."""
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return "".join(chr(0xDC00 + b) for b in err.object[err.start : err.end]), err.end


ESCAPE_BYTES = "tunesmith-escape-bytes"  # decode errors= handler: each undecodable byte b becomes U+DC00+b
codecs.register_error(ESCAPE_BYTES, _escape_bytes)
SNIFF_BYTES = 64 * 1024  # enough lines to guess a delimiter and an encoding
# The csv module refuses fields over 128 KiB as an error; a long document is a valid CSV field.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))


def read_source(spec: SourceSpec, needed: dict[str, Any]) -> Iterator[Raw]:
    """Stream the records of one source. `needed` maps field names to the FieldExprs that must resolve."""
    kind = spec.kind
    if kind == "packaged":
        yield from packaged.read(spec)
        return
    assert spec.path is not None
    path = spec.path
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if kind in ("text_folder", "hf_disk"):
        if not path.is_dir():
            raise DataError(f"{path}: kind '{kind}' expects a folder")
    elif path.is_dir():
        raise DataError(f"{path}: is a folder; kind '{kind}' expects a file")
    elif path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")

    if kind in ("csv", "tsv"):
        yield from read_csv(path, spec, needed)
    elif kind in ("jsonl", "openai_chat"):
        check_not_a_json_array(path, spec.encoding)
        yield from read_jsonl(path, spec.encoding)
    elif kind == "json":
        yield from read_json(path, spec.encoding)
    elif kind == "parquet":
        yield from read_parquet(path, needed)
    elif kind == "excel":
        yield from read_excel(path, spec.sheet, needed)
    elif kind == "text_folder":
        yield from read_text_folder(path, spec.encoding)
    elif kind == "hf_disk":
        yield from read_hf_disk(path, spec.subset, needed)
    elif kind in CONVERTED_KINDS:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            check_not_a_json_array(path, spec.encoding, kind)
            lines = read_jsonl(path, spec.encoding)
        else:
            lines = read_json(path, spec.encoding, kind)
        yield from chat_formats.convert(kind, lines)
    else:  # pragma: no cover - SourceKind is a closed Literal
        raise DataError(f"{path}: unsupported kind '{kind}'")


def check_columns(path: Any, columns: list[str], needed: dict[str, Any]) -> None:
    """Every column the fields read is in the header, once (named twice, a record keeps only the last of
    them, so the field would silently read whichever column came last)."""
    missing = {name: expr.expr for name, expr in needed.items() if not expr.present_in(columns)}
    if missing:
        what = ", ".join(f"{name} -> '{expr}'" for name, expr in missing.items())
        raise DataError(
            f"{path}: column(s) not found for {what}; the file has columns {columns}. "
            "Map them with task.<field> or the source's `fields:`"
        )
    check_repeated(path, columns, columns_read(needed), "rename them so that each field reads one column")


def columns_read(needed: dict[str, Any]) -> set[str]:
    """The columns the fields' expressions read."""
    return {c for expr in needed.values() for c in getattr(expr, "inner", expr).columns}


def check_repeated(path: Any, columns: list[str], read: set[str], fix: str) -> None:
    """A column read that the header names twice: a record keeps only the last of them."""
    twice = sorted(c for c, k in Counter(columns).items() if k > 1 and c in read)
    if twice:
        raise DataError(f"{path}: the header has column(s) {twice} more than once; {fix}")


# --- text decoding -------------------------------------------------------------------------


TEXT_KINDS = ("csv", "tsv", "json", "jsonl", "openai_chat", "alpaca", "sharegpt", "prompt_completion")
# Formats converted to chat messages: the file's name picks its reader (.jsonl, .ndjson: JSON Lines; else JSON).
CONVERTED_KINDS = ("alpaca", "sharegpt", "prompt_completion")


def detect_encoding(path: Path, given: str | None) -> str:
    if given and codecs.lookup(given).name == "utf-8" and _starts_with_bom(path):
        # `encoding: utf-8` on Excel's "CSV UTF-8": read as utf-8, the BOM stayed before the header's opening quote,
        # so the first column came out named '"text"', quotes and all
        return "utf-8-sig"
    return given or guess_encoding(path)[0]


def _starts_with_bom(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(3) == b"\xef\xbb\xbf"


def guess_encoding(path: Path) -> tuple[str, list[str]]:
    """(encoding, other equally likely encodings). UTF-8 (with or without BOM) is checked first."""
    return sniff_file_encoding(path)[:2]


def sniff_file_encoding(path: Path) -> tuple[str, list[str], int | None]:
    """guess_encoding, and the line the guess was made from when the file's first SNIFF_BYTES are plain ASCII
    (None otherwise).

    ASCII reads the same in UTF-8 and in every 8-bit code page, so an ASCII head says nothing: taken as UTF-8,
    a cp1252 file whose first accented letter came after 64 KiB had every later accented row quarantined without
    a word. The file is read on to its first byte beyond ASCII and the guess is made from there (a pass over the
    file, at disk speed, only for files that start with 64 KiB of ASCII)."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
        cut = len(head) == SNIFF_BYTES
        encoding, alternatives = guess_bytes_encoding(head, cut)
        if not (cut and encoding == "utf-8" and head.isascii()):
            return encoding, alternatives, None
        start, line = len(head), 1 + head.count(b"\n")
        while chunk := f.read(1 << 20):
            found = _NON_ASCII.search(chunk)
            if found is None:
                start, line = start + len(chunk), line + chunk.count(b"\n")
                continue
            at = chunk.rfind(b"\n", 0, found.start()) + 1  # from the start of its line, where the chunk holds it
            f.seek(start + at)
            sample = f.read(SNIFF_BYTES)
            encoding, alternatives = guess_bytes_encoding(sample, cut=len(sample) == SNIFF_BYTES)
            return encoding, alternatives, line + chunk.count(b"\n", 0, found.start())
    return "utf-8", [], None  # ASCII throughout


_NON_ASCII = re.compile(rb"[\x80-\xff]")


def guess_bytes_encoding(head: bytes, cut: bool) -> tuple[str, list[str]]:
    """guess_encoding of some bytes; `cut`: they are the start of something longer (a last character may be cut)."""
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig", []
    wide = _utf16_without_bom(head)
    if wide:
        return wide, []
    try:
        head.decode("utf-8")
        return "utf-8", []
    except UnicodeDecodeError as err:
        if cut and err.start > len(head) - 4:  # a multi-byte character cut by the sample boundary (not a file's end:
            return "utf-8", []  # "Sehr schön" in cp1252, 10 bytes, was read as UTF-8 and refused)
    if _mostly_utf8(head, cut):
        return "utf-8", []
    from charset_normalizer import from_bytes

    matches = list(from_bytes(head))
    if not matches:
        return "utf-8", []
    best = matches[0]
    # Short Western samples fit many 8-bit code pages equally well; among those that tie with the
    # best, prefer the one Windows and Excel actually write, and report the others.
    # The window is wider for those: a few Portuguese words scored cp1252 0.05 above cp1250, which turned
    # "Não... maçã" into "Năo... maçă".
    def close(m: Any, chaos: float) -> bool:
        return m.chaos <= best.chaos + chaos and m.coherence >= best.coherence - 0.05

    tied = [m.encoding for m in matches if close(m, 0.05)]
    western = {e for m in matches if close(m, 0.1) for e in (m.encoding, *m.could_be_from_charset)}
    # English with a few Western words ("à la carte", "20€", "Zürich") gives the language model too little to go on:
    # cp1257, cp850 or cp775 won ("ą la carte", "20Ç", "Z³rich"). When the text reads as a Western European
    # language, the code page Windows and Excel write is the one to read, if the bytes are valid in it.
    if best.language in WESTERN_LANGUAGES and best.chaos <= 0.05 and not codecs.lookup(best.encoding).name.startswith("utf"):
        try:
            head.decode("cp1252")
            western.add("cp1252")
            tied.append(best.encoding)
        except UnicodeDecodeError:
            pass
    chosen = next((enc for enc in ("cp1252", "latin_1", "iso8859_15") if enc in western), best.encoding)
    return chosen, [e for e in dict.fromkeys(tied) if e != chosen]


def _mostly_utf8(head: bytes, cut: bool) -> bool:
    """UTF-8 with a few bytes that are not (a line pasted in from a cp1252 file): read as UTF-8, and the lines
    holding those bytes go to quarantine one by one. Handed to charset_normalizer whole, such a sample came out as
    cp932, cp1252 or iso8859-15, and every accented row of the file was garbled with only a warning.

    A multi-byte UTF-8 character is a lead byte followed by just the right number of continuation bytes. In 8-bit
    text an accented letter is one byte between ASCII ones, which never decodes; a run that does decode happens
    only by chance (an "É" before a "”"), among many bytes that do not. So the sample is UTF-8 when its valid
    multi-byte characters are at least twice as many as the bytes that do not decode."""
    text = head.decode("utf-8", "surrogateescape")
    if cut:
        text = re.sub("[\udc80-\udcff]{1,3}$", "", text)  # a character cut by the sample's end
    bad = len(_BAD_BYTES.findall(text))
    good = sum(1 for c in text if c > "\x7f") - bad
    return good > 0 and good >= 2 * bad


# Languages charset_normalizer names that cp1252 writes (a Polish, Czech, Greek or Russian text keeps its own page)
WESTERN_LANGUAGES = {"English", "French", "German", "Spanish", "Portuguese", "Italian", "Dutch", "Danish", "Swedish",
                     "Norwegian", "Finnish", "Catalan", "Basque", "Galician", "Icelandic", "Indonesian", "Malay"}


def _utf16_without_bom(head: bytes) -> str | None:
    """UTF-16 without a BOM (SQL Server's `bcp -w`, .NET): mostly-ASCII text in it is valid UTF-8 byte for
    byte, with a NUL beside every character, so it is told by where the NULs are."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" not in head:
        return None
    half = len(head) // 2
    even, odd = head[0 : 2 * half : 2].count(0), head[1 : 2 * half : 2].count(0)
    if odd >= half * 0.3 and even <= half * 0.02:
        return "utf-16-le"
    if even >= half * 0.3 and odd <= half * 0.02:
        return "utf-16-be"
    return None


def _wide(encoding: str) -> bool:
    """An encoding whose line break is not the single byte 0x0A (UTF-16, UTF-32)."""
    try:
        return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    except LookupError:
        return False


def bad_bytes_error(encoding: str) -> str:
    return f"contains bytes that are not valid {encoding}; set the source's `encoding:` (e.g. cp1252, latin-1)"


def _has_bad_bytes(values: Any) -> bool:
    return any(isinstance(v, str) and _BAD_BYTES.search(v) for v in values)


# --- readers -------------------------------------------------------------------------------


def read_csv(path: Path, spec: SourceSpec, needed: dict[str, Any],
             on_header: Callable[[list[str]], None] | None = None) -> Iterator[Raw]:
    """`on_header`: given the header as written (a column named twice, twice), for callers that map fields later."""
    encoding = detect_encoding(path, spec.encoding)
    with path.open(encoding=encoding, errors=ESCAPE_BYTES, newline="") as f:
        sample = f.read(SNIFF_BYTES)
        f.seek(0)
        delimiter = spec.delimiter or ("\t" if spec.kind == "tsv" else _sniff_delimiter(sample))
        lines = _Lines(f)
        # strict: a quote that opens a field must close it. Lenient, `"Quoted" text` lost its quotes, and an
        # unclosed quote read every following line into one field, rows and all, without a word.
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: file is empty") from None
        except csv.Error as err:
            raise DataError(f"{path}:1: cannot parse the header: {err}") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        if _has_bad_bytes(header):
            raise DataError(f"{path}:1: header {bad_bytes_error(encoding)}")
        _check_csv_columns(path, header, needed, delimiter)
        if on_header:
            on_header(header)
        src, rows = str(path), 0
        while True:
            start = lines.number + 1
            lines.taken.clear()
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                taken = [(n, line) for n, line in enumerate(lines.taken, start=start) if line.strip()]
                # The quote that ended the runaway field opened the line it is on: that line starts a record of its
                # own (`"ok quoted` over two lines), so it is read again by a fresh reader. Read on from the line
                # after, the rest of that record came out as a row of its own (`multiline"`).
                reread = taken.pop() if len(taken) > 1 and taken[-1][1].startswith('"') else None
                if reread:
                    lines.push_back(reread[1])
                    reader = csv.reader(lines, delimiter=delimiter, strict=True)
                rows += len(taken)
                yield from _unclosed_quote(src, taken, err, reread and reread[0])
                continue
            if not row:  # a blank line separates nothing and holds nothing
                continue
            rows += 1
            if [h.strip().lstrip("\ufeff") for h in row] == header:  # two exports joined: the second's header
                yield Raw(src, start, None, "repeats the header line (files joined one after another?)",
                          text=_csv_line(row, delimiter))
            elif len(row) != len(header):
                yield Raw(src, start, None, f"has {len(row)} fields but the header has {len(header)}",
                          text=_csv_line(row, delimiter))
            elif _has_bad_bytes(row):
                yield Raw(src, start, None, bad_bytes_error(encoding), text=_csv_line(row, delimiter))
            else:
                yield Raw(src, start, dict(zip(header, row, strict=True)))
    if rows == 0:
        raise DataError(f"{path}: has a header but no data rows")


class _Lines:
    """A text file's lines for `csv.reader`, counted, with the ones the current record was read from."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.number = 0  # lines given so far
        self.taken: list[str] = []
        self._pending: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._pending.pop() if self._pending else next(self._f)
        self.number += 1
        self.taken.append(line)
        return line

    def push_back(self, line: str) -> None:
        """Give the last line again, to a fresh reader that parses from it."""
        self._pending.append(line)
        self.number -= 1


_QUOTE_HINT = ('a field that starts with a quote must end with one just before the delimiter or the line end; '
               'write a quote inside a quoted field as ""')


def _unclosed_quote(src: str, taken: list[tuple[int, str]], err: csv.Error, reread: int | None = None) -> Iterator[Raw]:
    """The lines of a record the CSV parser gave up on, each quarantined under its own line number: a
    quoted field that did not close where it should have runs over lines that are rows of their own.
    `reread`: the line whose opening quote the field ran on to, read again as a record of its own."""
    if not taken:
        return
    (first, line), last = taken[0], taken[-1][0]
    if reread:
        why = (f"it runs on to the quote that opens line {reread}, which is read again as a record of its own"
               + (f", so lines {first}-{last} are quarantined with it" if len(taken) > 1 else ""))
        yield Raw(src, first, None, f"malformed CSV: a quoted field opens on this line and does not close properly "
                  f"({why}); {_QUOTE_HINT}", text=_show_bad_bytes(line.rstrip("\r\n")))
    elif len(taken) == 1:
        yield Raw(src, first, None, f"malformed CSV: {err}; {_QUOTE_HINT}", text=_show_bad_bytes(line.rstrip("\r\n")))
        return
    else:
        yield Raw(src, first, None, f"malformed CSV: a quoted field opens on this line and does not close properly "
                  f"(line {last}: {err}), so lines {first}-{last} are quarantined with it; {_QUOTE_HINT}",
                  text=_show_bad_bytes(line.rstrip("\r\n")))
    for number, line in taken[1:]:
        yield Raw(src, number, None, f"malformed CSV: inside the quoted field opened at line {first}, which does "
                  "not close properly; fix that quote and this line is read again",
                  text=_show_bad_bytes(line.rstrip("\r\n")))


def _csv_line(row: list[str], delimiter: str) -> str:
    """The row as a CSV line again (quoted where needed), for the quarantine file.

    Undecodable bytes are shown as \\xNN escapes so the quarantine stays valid UTF-8.
    """
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="").writerow(row)
    return _show_bad_bytes(buf.getvalue())


def _show_bad_bytes(text: str) -> str:
    return _BAD_BYTES.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


DELIMITERS = ",;\t|"  # the ones files use; a sniffed guess picks among them


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:  # apostrophes and commas inside `;`-separated text defeat it ("Could not determine delimiter")
        return _consistent_delimiter(sample)


def _consistent_delimiter(sample: str, rows: int = 20) -> str:
    """The candidate in the header line that splits the most of the first rows into as many fields as the header
    has (ties: the first of DELIMITERS); ',' when none is in the header."""
    header_line = sample.split("\n", 1)[0]
    best, best_score = ",", -1
    for delimiter in (d for d in DELIMITERS if d in header_line):
        records = list(itertools.islice(csv.reader(io.StringIO(sample), delimiter=delimiter), rows + 1))
        width = len(records[0]) if records else 0
        score = sum(len(r) == width for r in records[1:])
        if width > 1 and score > best_score:
            best, best_score = delimiter, score
    return best


def _check_csv_columns(path: Path, header: list[str], needed: dict[str, Any], delimiter: str) -> None:
    """check_columns, saying which delimiter to set when the header read as one column that holds another one."""
    try:
        check_columns(path, header, needed)
    except DataError as err:
        others = [d for d in DELIMITERS if d != delimiter and len(header) == 1 and d in header[0]]
        if not others:
            raise
        shown = {"\t": "\"\\t\""}.get(others[0], f"'{others[0]}'")
        raise DataError(f"{err}. The header reads as one column split by {shown}, not by {delimiter!r}: set the "
                        f"source's `delimiter: {shown}`") from None


def read_jsonl(path: Path, encoding: str | None) -> Iterator[Raw]:
    encoding = detect_encoding(path, encoding)
    src, rows = str(path), 0
    wide = _wide(encoding)
    with path.open("rb") as f:
        # UTF-16 and UTF-32 break lines with more than the byte 0x0A: decoded as a stream, undecodable
        # bytes kept as surrogate escapes and found line by line, as the CSV reader does.
        lines = io.TextIOWrapper(f, encoding=encoding, errors=ESCAPE_BYTES, newline="\n") if wide else f
        for lineno, blob in enumerate(lines, start=1):
            if not blob.strip():
                continue
            rows += 1
            if isinstance(blob, str):
                line = blob
                if _BAD_BYTES.search(line):
                    yield Raw(src, lineno, None, bad_bytes_error(encoding), text=_show_bad_bytes(line.rstrip("\r\n")))
                    continue
            else:
                try:
                    line = blob.decode(encoding)
                except UnicodeDecodeError:
                    yield Raw(src, lineno, None, bad_bytes_error(encoding), text=blob.decode(encoding, "replace"))
                    continue
            try:  # without its line break: an unclosed string would report the break as a bad character
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                hint = ("; a JSON Lines line is one object with nothing after it: remove the trailing comma"
                        if err.msg == "Extra data" and line[err.pos:].strip() == "," else "")
                yield Raw(src, lineno, None, f"not valid JSON: {err.msg} (column {err.colno}){hint}", text=line.rstrip("\n"))
                continue
            except ValueError as err:  # an integer of over 4,300 digits: Python's guard, not a JSONDecodeError
                yield Raw(src, lineno, None, f"not valid JSON: {err}", text=line.rstrip("\n"))
                continue
            if not isinstance(record, dict):
                yield Raw(src, lineno, None, f"expected a JSON object, got {_json_type(record)}", text=line.rstrip("\n"))
                continue
            where = _SURROGATE_ESCAPE.search(line) and _unpaired_surrogate(record)
            if where:
                yield Raw(src, lineno, None, where, text=line.rstrip("\n"))
                continue
            yield Raw(src, lineno, record)
    if rows == 0:
        raise DataError(f"{path}: no records (only blank lines)")


def _read_as(to: str, kind: str) -> str:
    """How to have the source read as `to` (json or jsonl). A converted format keeps its kind and is renamed:
    `kind: jsonl` would read its records as they are, and no Alpaca or ShareGPT record would become a conversation."""
    suffix = f".{to}"
    if kind in CONVERTED_KINDS:
        return (f"name it {suffix} (a `kind: {kind}` file is read as JSON Lines when named .jsonl or .ndjson, "
                "as JSON otherwise)")
    return f"set the source's `kind: {to}` (or name it {suffix})"


def check_not_a_json_array(path: Path, encoding: str | None, kind: str = "jsonl") -> None:
    """A JSON Lines file must not be one whole JSON array (an export saved as .jsonl): every line of it
    would be rejected one by one, and the run would end with "no usable rows" instead of the fix."""
    encoding = detect_encoding(path, encoding)
    with path.open(encoding=encoding, errors=ESCAPE_BYTES, newline="\n") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                break
        else:
            return
    if not line.lstrip().startswith("["):
        return
    try:
        first = json.loads(line)
    except json.JSONDecodeError:  # a pretty-printed array: "[" alone, or "[{" and the first record's start
        pass
    else:  # a one-line array of records; an array of names (a header line?) is left to the line's own error
        if not (isinstance(first, list) and first and all(isinstance(r, dict) for r in first)):
            return
    raise DataError(f"{path}:{lineno}: the file is a JSON array, not JSON Lines (one object per line); "
                    + _read_as("json", kind))


def read_json(path: Path, encoding: str | None, kind: str = "json") -> Iterator[Raw]:
    """A JSON array of records (or an object holding exactly one such array); `kind`: the source's, for the hints."""
    encoding = detect_encoding(path, encoding)
    try:
        data = json.loads(path.read_text(encoding=encoding))
    except UnicodeDecodeError:
        raise DataError(f"{path}: {bad_bytes_error(encoding)}") from None
    except json.JSONDecodeError as err:
        hint = ""
        if err.msg == "Extra data" and err.colno == 1 and err.doc[: err.pos].strip().startswith("{"):
            hint = "; it looks like JSON Lines (one object per line): " + _read_as("jsonl", kind)
        raise DataError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}{hint}") from None
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        # the one holding records, beside lists of something else ({"data": [...], "tags": []} had been refused)
        records = {k: v for k, v in lists.items() if v and all(isinstance(x, dict) for x in v)}
        if len(records) == 1:
            data = next(iter(records.values()))
        elif len(lists) == 1:
            data = next(iter(lists.values()))
        else:
            found = f"arrays of records under {sorted(records)}" if records else f"arrays {sorted(lists)} and no records"
            raise DataError(f"{path}: expected a JSON array of records, or an object with one array of records in it; "
                            f"this object holds {found}")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {_json_type(data)}")
    if not data:
        raise DataError(f"{path}: the JSON array is empty")
    src = str(path)
    for i, record in enumerate(data, start=1):
        where = isinstance(record, dict) and _unpaired_surrogate(record)
        if where:
            yield Raw(src, i, None, where, text=json.dumps(record)[:2000])  # ASCII: the quarantine file can hold it
        elif isinstance(record, dict):
            yield Raw(src, i, record)
        else:
            yield Raw(src, i, None, f"record {i} is {_json_type(record)}, expected an object",
                      text=json.dumps(record, ensure_ascii=False)[:2000])


def _unpaired_surrogate(record: dict[str, Any]) -> str | None:
    """Why the record cannot be kept, when a string in it holds half of a UTF-16 surrogate pair (a `\\ud83d`
    escape without its partner, as truncated emoji often are): no Unicode text, Arrow or file can hold it."""
    stack: list[tuple[str, Any]] = [("", record)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in reversed(value.items()):
                name = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and _SURROGATE.search(key):
                    return _surrogate_reason(name, key)
                stack.append((name, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}", item) for i, item in reversed(list(enumerate(value))))
        elif isinstance(value, str) and _SURROGATE.search(value):
            return _surrogate_reason(path, value)
    return None


def _surrogate_reason(field: str, value: str) -> str:
    half = _SURROGATE.search(value).group()  # type: ignore[union-attr]
    return (f"field '{field.encode('ascii', 'backslashreplace').decode()}' holds an unpaired surrogate "
            f"(\\u{ord(half):04x}): half of an escaped emoji or other character, which is not valid Unicode; "
            "fix or remove that escape in the file")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def read_parquet(path: Path, needed: dict[str, Any]) -> Iterator[Raw]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file: {err}") from None
    check_columns(path, pf.schema_arrow.names, needed)
    if pf.metadata.num_rows == 0:
        raise DataError(f"{path}: has no rows")
    row, src = 0, str(path)
    for batch in pf.iter_batches(batch_size=8192):
        for record in batch.to_pylist():
            row += 1
            yield Raw(src, row, record)


def read_excel(path: Path, sheet: str | None, needed: dict[str, Any],
               on_header: Callable[[list[str]], None] | None = None) -> Iterator[Raw]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises zipfile/KeyError/InvalidFileException variants
        raise DataError(f"{path}: not a readable Excel workbook: {err}") from None
    try:
        if sheet is not None and sheet not in wb.sheetnames:
            raise DataError(f"{path}: no sheet named '{sheet}'; sheets are {wb.sheetnames}")
        ws = wb[sheet] if sheet else wb.worksheets[0]
        # read-only mode trusts the sheet's stored size, which some exporters write wrong: 4 of 12 rows were read
        ws.reset_dimensions()
        rows = ws.iter_rows(values_only=True)
        header_row = next(rows, None)
        if header_row is None:
            raise DataError(f"{path}: sheet '{ws.title}' is empty")
        header = ["" if h is None else str(h).strip() for h in header_row]
        try:
            check_columns(f"{path} [sheet {ws.title}]", header, needed)
        except DataError as err:
            others = [name for name in wb.sheetnames if name != ws.title]
            if sheet is None and others:  # the first sheet was only a guess: a cover or notes sheet, often
                raise DataError(f"{err}; the workbook has other sheets: {others}; pick one with the source's "
                                "`sheet:`") from None
            raise
        if on_header:
            on_header(header)
        src, count = f"{path}[{ws.title}]", 0
        for rowno, values in enumerate(rows, start=2):  # Excel's own row numbers
            if values is None or all(v is None for v in values):
                continue
            count += 1
            yield Raw(src, rowno, {h: v for h, v in zip(header, values, strict=False) if h})
        if count == 0:
            raise DataError(f"{path}: sheet '{ws.title}' has a header but no data rows")
    finally:
        wb.close()


def read_text_folder(path: Path, encoding: str | None) -> Iterator[Raw]:
    """`path/<label>/<anything>` files: one example per file, labelled by its folder."""
    labels = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not labels:
        raise DataError(f"{path}: expected one sub-folder per label (e.g. {path}/positive/1.txt), found none")
    # hidden files and whatever lies in hidden folders (Jupyter's .ipynb_checkpoints/ holds older copies)
    files = {label_dir: sorted(p for p in label_dir.rglob("*")
                               if p.is_file() and not any(part.startswith(".") for part in p.relative_to(label_dir).parts))
             for label_dir in labels}
    # One guess for the folder, from its files together: a short review alone told the guesser too little ("Très bon"
    # came out as big5's "Tr鋊 bon"); a file with a BOM still says its own.
    shared = encoding or _folder_encoding([f for group in files.values() for f in group])
    found = 0
    for label_dir in labels:
        for file in files[label_dir]:
            found += 1
            data = file.read_bytes()  # read once: its own encoding is told from the same bytes
            if _binary(data):
                yield Raw(str(file), 1, None,
                          f"not a text file (binary): '{file.name}'; move it out of the label folder")
                continue
            enc = encoding or _own_encoding(data) or shared
            try:
                text = data.decode(enc).replace("\r\n", "\n").replace("\r", "\n")  # as read_text's universal newlines
            except UnicodeDecodeError:
                yield Raw(str(file), 1, None, bad_bytes_error(enc))
                continue
            yield Raw(str(file), 1, {"text": text, "label": label_dir.name})
    if found == 0:
        raise DataError(f"{path}: the label folders {[p.name for p in labels]} hold no files")


def _folder_encoding(files: list[Path]) -> str:
    """The encoding of a folder of text files, guessed from as many of them (whole) as fit in one sample."""
    sample, cut = b"", False
    for file in files:
        with file.open("rb") as f:
            data = f.read(SNIFF_BYTES + 1)
        if data.startswith(BOMS) or _binary(data):
            continue  # says its own; a Thumbs.db beside cp1252 files made the guess UTF-8, and every file was rejected
        if len(sample) + len(data) > SNIFF_BYTES:
            if not sample:
                sample, cut = data[:SNIFF_BYTES], True
            break
        sample += data + b"\n"
    return guess_bytes_encoding(sample, cut)[0] if sample else "utf-8"


BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")  # UTF-8's, UTF-16's (little and big endian)


def _binary(data: bytes) -> bool:
    """Bytes no text file holds: a NUL outside UTF-16 or UTF-32 (an image, Thumbs.db, a .docx)."""
    return b"\x00" in data and not data.startswith(BOMS[1:]) and _utf16_without_bom(data[:SNIFF_BYTES]) is None


def _own_encoding(data: bytes) -> str | None:
    """The encoding a file's bytes name by a byte-order mark, or prove by being valid UTF-8 with letters beyond ASCII
    (bytes that no 8-bit text makes by chance); None: the folder's."""
    if data.startswith(BOMS[0]):
        return "utf-8-sig"
    if data.startswith(BOMS[1:]):
        return "utf-16"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "utf-8" if not data.isascii() else None


def dataset_rows(ds: Any, size: int = 4096) -> Iterator[dict[str, Any]]:
    """A `datasets.Dataset`'s rows, read `size` at a time, a ClassLabel column's indices as its names: imdb's label
    is stored as 0/1, and the classes came out "0" and "1" (-1, a missing label, is None)."""
    import datasets

    named = {c: f for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    # a list of them (go_emotions' multi-label layout) came out as "0", "1", ...
    listed = {c: f.feature for c, f in ds.features.items()
              if isinstance(getattr(f, "feature", None), datasets.ClassLabel) and not isinstance(f, datasets.ClassLabel)}

    def name(feature: Any, v: int | None) -> str | None:
        return None if v is None or v < 0 else feature.int2str(v)

    for batch in ds.iter(batch_size=size):
        for column, feature in named.items():
            batch[column] = [name(feature, v) for v in batch[column]]
        for column, feature in listed.items():
            batch[column] = [None if vs is None else [n for v in vs if (n := name(feature, v)) is not None]
                             for vs in batch[column]]
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            yield dict(zip(columns, values, strict=True))


def read_hf_disk(path: Path, subset: str | None, needed: dict[str, Any]) -> Iterator[Raw]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # FileNotFoundError or a format error from datasets
        raise DataError(f"{path}: not a dataset saved with save_to_disk: {err}") from None
    parts = dict(ds) if isinstance(ds, datasets.DatasetDict) else {None: ds}
    if subset is not None:
        if subset not in parts:
            raise DataError(f"{path}: no split '{subset}'; splits are {list(parts)}")
        parts = {subset: parts[subset]}
    for name, part in parts.items():
        src = f"{path}[{name}]" if name else str(path)
        check_columns(src, part.column_names, needed)
        for row, record in enumerate(dataset_rows(part), start=1):
            yield Raw(src, row, record)
