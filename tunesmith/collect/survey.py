"""Survey exports (CSV or Excel from Google Forms, Qualtrics or any form tool) read as records.

A survey source is a file, so it is not collected first: `data prepare` reads it through `read`,
which streams `Raw` records with their real file line (or Excel row), like the other readers.

- Google Forms: one header row with a "Timestamp" column (first, named in the export's language:
  Zeitstempel, Marca temporal, Horodateur, ...); multi-select answers joined by ", ".
- Qualtrics: three header rows (short ids like Q1, the question text, `{"ImportId": ...}`); every
  column is addressable by its short id and by its question text; the respondent is `ResponseId`.
- plain: one header row.

Likert answers become numbers (a named scale or an explicit map; an answer off the scale is a
rejected row naming the column and the allowed answers), multi-select answers become lists, and the
respondent id goes into `_group` so that one person's answers never straddle splits. `explode`
turns each listed free-text answer into its own record (`text` + `question`).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from tunesmith.collect.sink import COLLECTOR, PROVENANCE_KEY
from tunesmith.config import SourceSpec, SurveySpec
from tunesmith.data.raw import Raw
from tunesmith.data.sources import check_columns, check_repeated, columns_read, read_csv, read_excel
from tunesmith.errors import DataError

GROUP_KEY = "_group"  # reserved record key: the respondent id, used as the example's group
EXCEL_SUFFIXES = (".xlsx", ".xlsm")
QUALTRICS_RESPONDENT = "ResponseId"  # Qualtrics' own per-response id column
GOOGLE_FORMS_MARK = "Timestamp"  # the first column of every Google Forms export (in English)
# The same column in exports made in other languages: `format: auto` had read those as plain, and left multi-select
# answers ("Ramen, Gyoza") unsplit. Compared casefolded, as the first column.
GOOGLE_FORMS_MARKS = frozenset(m.casefold() for m in (
    GOOGLE_FORMS_MARK, "Zeitstempel", "Marca temporal", "Marca de tiempo", "Horodateur", "Horodatage", "Data/ora",
    "Informazioni cronologiche", "Carimbo de data/hora", "Indicação de tempo", "Tijdstempel", "Tidsstempel",
    "Tidsstämpel", "Aikaleima", "Sygnatura czasowa", "Časová značka", "Časové razítko", "Időbélyeg",
    "Zaman damgası", "Отметка времени", "Позначка часу", "Χρονική σήμανση", "חותמת זמן", "الطابع الزمني",
    "タイムスタンプ", "时间戳", "時間戳記", "타임스탬프", "Dấu thời gian", "Stempel waktu", "Cap masa", "Marca de temps",
    "ประทับเวลา", "टाइमस्टैम्प"))
SEPARATORS = {"google_forms": ", ", "qualtrics": ",", "plain": ";"}  # how each tool joins multi-select choices

SCALES: dict[str, list[str]] = {
    "agree5": ["Strongly disagree", "Disagree", "Neither agree nor disagree", "Agree", "Strongly agree"],
    "agree7": ["Strongly disagree", "Disagree", "Somewhat disagree", "Neither agree nor disagree",
               "Somewhat agree", "Agree", "Strongly agree"],
    "satisfied5": ["Very dissatisfied", "Dissatisfied", "Neither satisfied nor dissatisfied", "Satisfied", "Very satisfied"],
    "frequency5": ["Never", "Rarely", "Sometimes", "Often", "Always"],
}
# The midpoint is often labelled "Neutral" instead of the long form.
SCALE_ALIASES: dict[str, dict[str, float]] = {"agree5": {"Neutral": 3}, "agree7": {"Neutral": 4}, "satisfied5": {"Neutral": 3}}
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)$")


def _quiet(_: str) -> None:
    pass


def read(spec: SourceSpec, needed: dict[str, Any], warn: Callable[[str], None] = _quiet) -> Iterator[Raw]:
    """Stream one survey export's responses as records. `needed`: field name -> FieldExpr to check up front; `warn`
    hears of multi-select answers that look joined by another tool's separator than the one used."""
    assert spec.survey is not None and spec.path is not None
    path, survey = spec.path, spec.survey
    written: list[str] = []  # the first header row as in the file: a repeated name is one key of a record
    rows = _rows(path, spec, written.extend)
    ahead = list(itertools.islice(rows, 2))  # enough to tell Qualtrics' header rows from data
    fmt = survey.format
    if fmt == "auto":
        fmt = "qualtrics" if _is_qualtrics(ahead) else "google_forms" if _is_google_forms(_header(ahead)) else "plain"
    questions: dict[str, str] = {}  # Qualtrics: short id -> question text
    if fmt == "qualtrics":
        if not _is_qualtrics(ahead):
            raise DataError(f"{path}: not a Qualtrics export: its third row should hold {{\"ImportId\": ...}} for every "
                            "column; set the survey's `format:` to google_forms or plain")
        texts = ahead[0].record or {}
        questions = {k: str(v).strip() for k, v in texts.items() if v not in (None, "") and str(v).strip() != k}
        header, ahead = list(texts), []
    else:
        for raw in rows if not any(r.record is not None for r in ahead) else ():
            ahead.append(raw)  # read past unparseable rows to the first that parses: its keys are the header
            if raw.record is not None:
                break
        header = _header(ahead)
    if not header:  # nothing parsed at all: every row is an error, passed on as is
        yield from itertools.chain(ahead, rows)
        return
    survey_reader = _Survey(path, survey, fmt, header, questions)
    # auto read it as plain (";"-joined choices), yet an answer looks ", "-joined: a Google Forms export it did not know
    if survey.format == "auto" and fmt == "plain" and survey.separator is None:
        survey_reader.suspect_commas = warn
    check_columns(path, survey_reader.output_columns(), needed)
    survey_reader.check_repeated(written, needed)
    mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    data_rows = 0
    for raw in itertools.chain(ahead, rows):
        data_rows += 1
        if raw.record is None:
            yield raw
            continue
        for out in survey_reader.records(raw):
            if out.record is not None:
                out.record[PROVENANCE_KEY] = {"kind": "survey", "origin": f"{raw.source}:{raw.line}",
                                              "collected_at": mtime, "collector": COLLECTOR}
            yield out
    if data_rows == 0:  # one-header-row files already failed on this in read_csv / read_excel
        raise DataError(f"{path}: has Qualtrics' three header rows but no responses")


def _rows(path: Path, spec: SourceSpec, on_header: Callable[[list[str]], None]) -> Iterator[Raw]:
    """Every row after the first header row, with its real line (CSV) or row number (Excel)."""
    if not path.exists():
        raise DataError(f"{path}: no such file (the survey export)")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; a survey source is a CSV or Excel export file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix == ".xls":
        raise DataError(f"{path}: the old .xls format is not readable; save it as .xlsx or export CSV")
    if suffix in EXCEL_SUFFIXES:
        return read_excel(path, spec.sheet, {}, on_header)
    return read_csv(path, spec, {}, on_header)


def _is_qualtrics(ahead: list[Raw]) -> bool:
    """Is the second row read (the file's third) Qualtrics' ImportId row ({"ImportId": "QID1"} in every filled cell)?"""
    if len(ahead) < 2 or ahead[0].record is None or ahead[1].record is None:
        return False
    cells = [v for v in ahead[1].record.values() if isinstance(v, str) and v.strip()]
    for cell in cells:
        try:
            value = json.loads(cell)
        except ValueError:
            return False
        if not (isinstance(value, dict) and "ImportId" in value):
            return False
    return bool(cells)


def _is_google_forms(header: list[str]) -> bool:
    """Google Forms' first column is the response time, named in the export's language."""
    return GOOGLE_FORMS_MARK in header or bool(header) and str(header[0]).strip().casefold() in GOOGLE_FORMS_MARKS


def _header(raws: list[Raw]) -> list[str]:
    good = next((r.record for r in raws if r.record is not None), None)
    return list(good or {})


class _Survey:
    """The per-row work, with every configured column resolved against the header once."""

    def __init__(self, path: Path, survey: SurveySpec, fmt: str, header: list[str], questions: dict[str, str]) -> None:
        self.path = path
        self.suspect_commas: Callable[[str], None] | None = None  # warned of ", "-joined answers (see read)
        self._comma_warned: set[str] = set()  # once per column
        self.header = header
        self.questions = questions
        by_text: dict[str, list[str]] = {}
        for key, text in questions.items():
            by_text.setdefault(text, []).append(key)
        by_name = {**{text: keys[0] for text, keys in by_text.items()}, **{h: h for h in header}}  # short ids win
        respondent = survey.respondent
        if respondent is None and fmt == "qualtrics" and QUALTRICS_RESPONDENT in header:
            respondent = QUALTRICS_RESPONDENT

        def column(name: str, role: str) -> str:
            if name not in by_name:
                raise DataError(f"{path}: {role} column '{name}' not found; the file has columns {self.describe_columns()}")
            if name not in header and len(by_text[name]) > 1:  # e.g. a matrix question's rows, if their texts repeat
                raise DataError(f"{path}: the question '{_short(name)}' heads several columns {by_text[name]}; "
                                f"name the {role} column by its id")
            return by_name[name]

        self.respondent = column(respondent, "respondent") if respondent else None
        self.likert = {column(name, "likert"): _scale(name, scale) for name, scale in survey.likert.items()}
        self.multi = [column(name, "multi_select") for name in survey.multi_select]
        self.separator = survey.separator if survey.separator is not None else SEPARATORS[fmt]
        self.explode = {column(name, "explode"): name for name in survey.explode}  # short id -> the name the config uses
        both = [self.explode[c] for c in self.explode if c in self.likert or c in self.multi]
        if both:
            raise DataError(f"{path}: column(s) {both} are in `explode` (free text) and also in likert/multi_select; "
                            "a column is one or the other")
        if self.explode:
            clash = [c for c in ("text", "question") if c in by_name and by_name[c] not in self.explode]
            if clash:
                raise DataError(f"{path}: has column(s) {clash}, which `explode` writes into every record; rename them in the file")

    def check_repeated(self, written: list[str], needed: dict[str, Any]) -> None:
        """A column this source reads that the file names twice (Google Forms heads two questions alike, "Comments"):
        its records kept the last of them, and the rows where that one is empty were lost without a word."""
        read = columns_read(needed) | {self.respondent, *self.likert, *self.multi, *self.explode}
        check_repeated(self.path, written, read, "rename them in the file so that each is one question")

    def describe_columns(self) -> list[str]:
        return [f"{h} ({_short(self.questions[h])})" if h in self.questions else h for h in self.header]

    def output_columns(self) -> list[str]:
        """The keys the records will have (for checking the config's fields before reading a row)."""
        kept = [h for h in self.header if h not in self.explode]
        cols = kept + [self.questions[h] for h in kept if h in self.questions]
        if self.explode:
            cols += ["text", "question"]
        return cols + ([GROUP_KEY] if self.respondent else [])

    def records(self, raw: Raw) -> Iterator[Raw]:
        row = {k: _plain(v) for k, v in (raw.record or {}).items()}
        for col, (scale_name, mapping, allowed) in self.likert.items():
            value = _likert(row.get(col), mapping)
            if value is _OFF_SCALE:
                yield Raw(raw.source, raw.line, None,
                          f"column '{self._name(col)}': answer '{row.get(col)}' is not on the {scale_name} scale; "
                          f"allowed: {allowed} or a number", text=json.dumps(row, ensure_ascii=False, default=str))
                return
            row[col] = value
        for col in self.multi:
            value = row.get(col)
            if self.suspect_commas is not None and ", " in str(value or "") and ";" not in str(value):
                self._warn_commas(col, raw)
            row[col] = [] if value in (None, "") else [p.strip() for p in str(value).split(self.separator) if p.strip()]
        group = str(row.get(self.respondent) or "").strip() if self.respondent else ""
        answers = {c: (self.explode[c], row.pop(c, None)) for c in self.explode}
        for key, text in self.questions.items():
            if key in row and text not in row:
                row[text] = row[key]
        if group:  # an anonymous response has no group: it stands alone
            row[GROUP_KEY] = group
        if not self.explode:
            yield Raw(raw.source, raw.line, row)
            return
        for column, (question, answer) in answers.items():
            if answer is None or not str(answer).strip():
                continue
            yield Raw(raw.source, raw.line, {**row, "text": answer, "question": question}, part=column)

    def _warn_commas(self, col: str, raw: Raw) -> None:
        assert self.suspect_commas is not None
        if col in self._comma_warned:
            return
        self._comma_warned.add(col)
        self.suspect_commas(f"{self.path}: multi_select column '{self._name(col)}' has answers joined by \", \" "
                            f"(line {raw.line}) but the file was read as a plain export, whose choices are joined by "
                            "\";\": they are not split; if it is a Google Forms export, set the survey's "
                            "`format: google_forms` (or `separator: \", \"`)")

    def _name(self, col: str) -> str:
        return f"{col} ({_short(self.questions[col])})" if col in self.questions else col


_OFF_SCALE = object()


def _scale(column: str, scale: dict[str, float] | str) -> tuple[str, dict[str, float], list[str]]:
    """(name shown in errors, normalised answer -> number, answers shown as allowed)."""
    if isinstance(scale, str):
        answers = {text: float(i) for i, text in enumerate(SCALES[scale], start=1)} | SCALE_ALIASES.get(scale, {})
        return scale, {_norm(k): _number(v) for k, v in answers.items()}, list(answers)
    return f"'{column}'", {_norm(k): _number(v) for k, v in scale.items()}, list(scale)


def _likert(value: Any, mapping: dict[str, float]) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value
    text = str(value)
    if not text.strip():
        return None  # not answered: a missing value, not an error
    found = mapping.get(_norm(text))
    if found is not None:
        return found
    if _NUMBER.match(text.strip()):
        return _number(float(text))
    return _OFF_SCALE


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _plain(value: Any) -> Any:
    """Excel dates as ISO text, so records stay JSON-like whatever the file type."""
    return value.isoformat() if isinstance(value, datetime | date) else value


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
