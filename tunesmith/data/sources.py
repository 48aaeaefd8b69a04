"""Readers, one per input kind. Each streams `Raw` records with the file and line they came from.

A reader never drops anything silently: a line it cannot parse comes out as a `Raw` with `error`
set (it goes to quarantine with its line number), and a file it cannot read at all raises
`DataError` naming the file. Tabular readers check the header against the columns the config needs
before reading a single row.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.config import SourceSpec
from tunesmith.data import chat_formats, packaged
from tunesmith.data.raw import Raw
from tunesmith.errors import DataError

_BAD_BYTES = re.compile("[\udc80-\udcff]")  # what `surrogateescape` leaves for undecodable bytes
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
    elif kind in ("alpaca", "sharegpt", "prompt_completion"):
        lines = read_jsonl(path, spec.encoding) if path.suffix.lower() in (".jsonl", ".ndjson") else read_json(path, spec.encoding)
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
    read = {c for expr in needed.values() for c in getattr(expr, "inner", expr).columns}
    twice = sorted(c for c, k in Counter(columns).items() if k > 1 and c in read)
    if twice:
        raise DataError(f"{path}: the header has column(s) {twice} more than once; rename them so that "
                        "each field reads one column")


# --- text decoding -------------------------------------------------------------------------


TEXT_KINDS = ("csv", "tsv", "json", "jsonl", "openai_chat", "alpaca", "sharegpt", "prompt_completion")


def detect_encoding(path: Path, given: str | None) -> str:
    return given or guess_encoding(path)[0]


def guess_encoding(path: Path) -> tuple[str, list[str]]:
    """(encoding, other equally likely encodings). UTF-8 (with or without BOM) is checked first."""
    head = path.open("rb").read(SNIFF_BYTES)
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig", []
    try:
        head.decode("utf-8")
        return "utf-8", []
    except UnicodeDecodeError as err:
        if err.start > len(head) - 4:  # a multi-byte character cut by the sample boundary
            return "utf-8", []
    from charset_normalizer import from_bytes

    matches = list(from_bytes(head))
    if not matches:
        return "utf-8", []
    best = matches[0]
    # Short Western samples fit many 8-bit code pages equally well; among those that tie with the
    # best, prefer the one Windows and Excel actually write, and report the others.
    tied = [m.encoding for m in matches if m.chaos <= best.chaos + 0.05 and m.coherence >= best.coherence - 0.05]
    chosen = next((enc for enc in ("cp1252", "latin_1", "iso8859_15") if enc in tied), best.encoding)
    return chosen, [e for e in tied if e != chosen]


def bad_bytes_error(encoding: str) -> str:
    return f"contains bytes that are not valid {encoding}; set the source's `encoding:` (e.g. cp1252, latin-1)"


def _has_bad_bytes(values: Any) -> bool:
    return any(isinstance(v, str) and _BAD_BYTES.search(v) for v in values)


# --- readers -------------------------------------------------------------------------------


def read_csv(path: Path, spec: SourceSpec, needed: dict[str, Any]) -> Iterator[Raw]:
    encoding = detect_encoding(path, spec.encoding)
    with path.open(encoding=encoding, errors="surrogateescape", newline="") as f:
        sample = f.read(SNIFF_BYTES)
        f.seek(0)
        delimiter = spec.delimiter or ("\t" if spec.kind == "tsv" else _sniff_delimiter(sample))
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: file is empty") from None
        except csv.Error as err:
            raise DataError(f"{path}:1: cannot parse the header: {err}") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        if _has_bad_bytes(header):
            raise DataError(f"{path}:1: header {bad_bytes_error(encoding)}")
        check_columns(path, header, needed)
        src, last, rows = str(path), reader.line_num, 0
        while True:
            start = last + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                last = reader.line_num
                yield Raw(src, start, None, f"malformed CSV: {err}")
                continue
            last = reader.line_num
            if not row:  # a blank line separates nothing and holds nothing
                continue
            rows += 1
            if len(row) != len(header):
                yield Raw(src, start, None, f"has {len(row)} fields but the header has {len(header)}",
                          text=_csv_line(row, delimiter))
            elif _has_bad_bytes(row):
                yield Raw(src, start, None, bad_bytes_error(encoding), text=_csv_line(row, delimiter))
            else:
                yield Raw(src, start, dict(zip(header, row, strict=True)))
    if rows == 0:
        raise DataError(f"{path}: has a header but no data rows")


def _csv_line(row: list[str], delimiter: str) -> str:
    """The row as a CSV line again (quoted where needed), for the quarantine file.

    Undecodable bytes are shown as \\xNN escapes so the quarantine stays valid UTF-8.
    """
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="").writerow(row)
    return buf.getvalue().encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def read_jsonl(path: Path, encoding: str | None) -> Iterator[Raw]:
    encoding = detect_encoding(path, encoding)
    src, rows = str(path), 0
    with path.open("rb") as f:
        for lineno, blob in enumerate(f, start=1):
            if not blob.strip():
                continue
            rows += 1
            try:
                line = blob.decode(encoding)
            except UnicodeDecodeError:
                yield Raw(src, lineno, None, bad_bytes_error(encoding), text=blob.decode(encoding, "replace"))
                continue
            try:  # without its line break: an unclosed string would report the break as a bad character
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                yield Raw(src, lineno, None, f"not valid JSON: {err.msg} (column {err.colno})", text=line.rstrip("\n"))
                continue
            if not isinstance(record, dict):
                yield Raw(src, lineno, None, f"expected a JSON object, got {_json_type(record)}", text=line.rstrip("\n"))
                continue
            yield Raw(src, lineno, record)
    if rows == 0:
        raise DataError(f"{path}: no records (only blank lines)")


def read_json(path: Path, encoding: str | None) -> Iterator[Raw]:
    """A JSON array of records (or an object holding exactly one such array)."""
    encoding = detect_encoding(path, encoding)
    try:
        data = json.loads(path.read_text(encoding=encoding))
    except UnicodeDecodeError:
        raise DataError(f"{path}: {bad_bytes_error(encoding)}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of records (or an object with one array in it)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {_json_type(data)}")
    if not data:
        raise DataError(f"{path}: the JSON array is empty")
    src = str(path)
    for i, record in enumerate(data, start=1):
        if isinstance(record, dict):
            yield Raw(src, i, record)
        else:
            yield Raw(src, i, None, f"record {i} is {_json_type(record)}, expected an object",
                      text=json.dumps(record, ensure_ascii=False)[:2000])


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


def read_excel(path: Path, sheet: str | None, needed: dict[str, Any]) -> Iterator[Raw]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises zipfile/KeyError/InvalidFileException variants
        raise DataError(f"{path}: not a readable Excel workbook: {err}") from None
    try:
        if sheet is not None and sheet not in wb.sheetnames:
            raise DataError(f"{path}: no sheet named '{sheet}'; sheets are {wb.sheetnames}")
        ws = wb[sheet] if sheet else wb.worksheets[0]
        rows = ws.iter_rows(values_only=True)
        header_row = next(rows, None)
        if header_row is None:
            raise DataError(f"{path}: sheet '{ws.title}' is empty")
        header = ["" if h is None else str(h).strip() for h in header_row]
        check_columns(f"{path} [sheet {ws.title}]", header, needed)
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
    found = 0
    for label_dir in labels:
        for file in sorted(p for p in label_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            found += 1
            enc = encoding or detect_encoding(file, None)
            try:
                text = file.read_text(encoding=enc)
            except UnicodeDecodeError:
                yield Raw(str(file), 1, None, bad_bytes_error(enc))
                continue
            yield Raw(str(file), 1, {"text": text, "label": label_dir.name})
    if found == 0:
        raise DataError(f"{path}: the label folders {[p.name for p in labels]} hold no files")


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
        row = 0
        for batch in part.iter(batch_size=4096):
            cols = list(batch)
            for values in zip(*(batch[c] for c in cols), strict=True):
                row += 1
                yield Raw(src, row, dict(zip(cols, values, strict=True)))
