"""Typed project configuration, shared by the CLI, YAML files and (later) the HTTP API and job runner.

Every default lives here, with the reason for it beside it. A config is a YAML file validated into
`ProjectConfig`; dotted overrides (`data.split.seed=7`) patch it before validation, so the file, the
command line and an API payload go through exactly the same checks. Imports nothing from tunesmith
except its error type.
"""

from __future__ import annotations

import ast
import difflib
import enum
import functools
import inspect
import io
import json
import os
import re
import sys
import tokenize
import types
import typing
import unicodedata
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from tunesmith.errors import ConfigError

SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")  # order = rank in leakage removal


def _only(keys: dict[str, Any], allowed: tuple[str, ...], message: str) -> dict[str, Any]:
    """`keys` unchanged when every key is allowed; else a ValueError: `message` with the unknown and allowed keys."""
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ValueError(message.format(unknown, list(allowed)))
    return keys


class Spec(BaseModel):
    # extra="forbid": a misspelt key is an error naming it, never a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskType(str, enum.Enum):
    single_label = "single_label_classification"
    multi_label = "multi_label_classification"
    regression = "regression"
    chat = "chat"
    preference = "preference"  # prompt + preferred/non-preferred answers, trained with DPO


GENERATIVE_TASKS = (TaskType.chat, TaskType.preference)  # trained as causal LMs, not with a head


class TaskSpec(Spec):
    """What is learned, and which fields of the input hold it.

    Field values are *field expressions*: a column name (`review`), a dotted path into nested
    records (`meta.rating`), or a template joining several fields (`"{title}. {body}"`).
    """

    type: TaskType = TaskType.single_label  # the most common custom task
    description: str = ""  # free text, carried into the data report and later the model card
    text: str = "text"  # input text (classification and regression)
    label: str = "label"  # class name; for multi-label a list or a `label_separator`-joined string
    score: str = "score"  # regression target, a number in the user's units
    messages: str = "messages"  # chat: list of {role, content, weight?} messages (OpenAI format)
    prompt: str = "prompt"  # preference: the prompt (text or a list of messages); OpenAI's `input.messages` is found by itself
    chosen: str = "chosen"  # preference: the preferred answer (text or [{role: assistant, content}]); OpenAI: preferred_output
    rejected: str = "rejected"  # preference: the non-preferred answer; OpenAI: non_preferred_output
    id: str | None = None  # stable example id; None: "<file>:<line>", shown by `data show`
    labels: list[str] | None = None  # the label set in id order; None: inferred, sorted
    label_separator: str = ","  # splits multi-label strings like "food,price"

    @field_validator("label_separator")
    @classmethod
    def _some_separator(cls, v: str) -> str:
        if not v:  # every multi-label row was then rejected at preparation as "empty separator"
            raise ValueError("must be at least one character: it splits multi-label strings such as 'food,price'")
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _numbers_as_labels(cls, v: Any) -> Any:
        """`labels: [1, 2, 3, 4, 5]` (star ratings) are the classes "1".."5", as the data's 1..5 are read; it was
        refused as "Input should be a valid string". Booleans stay refused, with their YAML hint."""
        if isinstance(v, list):
            return [str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
        return v

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            v = [unicodedata.normalize("NFC", x) for x in v]  # as the data's labels are read
            if len(v) < 2:
                raise ValueError("a classification task needs at least 2 labels")
            dup = sorted({x for x in v if v.count(x) > 1})
            if dup:
                raise ValueError(f"labels are listed twice: {dup}")
        return v


# --- collected sources: web pages, REST APIs, surveys, public hub datasets, synthetic data ---------
# Each is a `kind` of SourceSpec with its own sub-section; `tunesmith collect` fetches or generates the
# rows into a JSONL file (data.collect_dir), `data prepare` reads that file like any other source.


class HttpSpec(Spec):
    """How web pages and REST APIs are fetched: politely, with retries, from a cache on re-runs."""

    rate_limit: float = Field(1.0, gt=0)  # requests per second per host: polite to sites, within most API quotas
    retries: int = Field(4, ge=0, le=20)  # 429, 5xx, timeouts and dropped connections are retried this many times
    backoff: float = Field(1.0, ge=0)  # seconds before the first retry, doubled each time; a Retry-After header wins
    max_backoff: float = Field(60.0, gt=0)  # a longer Retry-After (or backoff) is capped here rather than stalling the run
    timeout: float = Field(20.0, gt=0)  # seconds per request (connect and read); a slow page counts as a failure to retry
    robots: bool = True  # honour robots.txt (pages it disallows are listed as failures, never fetched)
    user_agent: str = "tunesmith-collect/0.1"  # what sites see and robots.txt rules are matched against
    cache: bool = True  # successful responses kept on disk (collect_dir/http-cache): a re-run does not refetch
    headers: dict[str, str] = {}  # extra request headers (never put secrets here: use rest.auth_env)


class WebSpec(Spec):
    """Pages: a list of URLs and/or a sitemap, optionally crawled within the same site."""

    urls: list[str] = []  # pages to fetch, kept in this order
    sitemap: str | None = None  # a sitemap.xml (or sitemap index) whose <loc> pages are fetched
    depth: int = Field(0, ge=0, le=10)  # follow same-site links this many hops from the listed pages; 0: only those
    max_pages: int = Field(200, ge=1)  # at most this many pages from this source: crawls grow fast
    include: list[str] = []  # regexes; a crawled URL must match one (listed and sitemap URLs are always taken)
    exclude: list[str] = []  # regexes; matching URLs are never fetched
    min_chars: int = Field(100, ge=0)  # pages whose main text is shorter (menus, error pages) are listed, not kept

    @model_validator(mode="after")
    def _some_pages(self) -> WebSpec:
        if not self.urls and not self.sitemap:
            raise ValueError("web needs `urls` (a list of pages) or `sitemap` (a sitemap URL)")
        return self


class RestSpec(Spec):
    """A JSON API: records at a JSONPath in each response, one request per page."""

    url: str  # the first page's URL (query parameters may be in it or in `params`)
    params: dict[str, str | int | float] = {}  # query parameters sent with every request
    records: str = "$[*]"  # JSONPath to the records in a response, e.g. $.data[*]
    map: dict[str, str] = {}  # output field -> JSONPath inside one record, e.g. {text: $.body, label: $.tags[0]}; {}: the record as is
    pagination: Literal["none", "page", "offset", "cursor", "link"] = "link"  # link: follow the `Link: rel=next` header (GitHub-style); stops when absent
    page_param: str = "page"  # pagination: page -> ?page=1,2,...
    start_page: int = 1  # the first page's number (some APIs count from 0)
    offset_param: str = "offset"  # pagination: offset -> ?offset=0,limit,2*limit,...
    limit_param: str = "limit"  # page size parameter for page/offset pagination
    page_size: int | None = Field(None, ge=1)  # sent as limit_param when set; offset pagination needs it
    cursor_param: str = "cursor"  # pagination: cursor -> ?cursor=<value from the last response>
    cursor_path: str = "$.next_cursor"  # JSONPath to the next cursor in a response; null or absent ends
    next_path: str | None = None  # pagination: link: JSONPath to the next page's URL in the body (DRF/PokeAPI `next`) instead of the Link header
    max_pages: int = Field(1000, ge=1)  # a safety stop for endless APIs
    auth_env: str | None = None  # environment variable holding the token; read at run time, never written to configs, logs or files
    auth_header: str = "Authorization"  # where the token goes
    auth_scheme: str = "Bearer"  # prefix before the token ("" for APIs that want the bare key)

    @model_validator(mode="after")
    def _offset_needs_size(self) -> RestSpec:
        if self.pagination == "offset" and self.page_size is None:
            raise ValueError("offset pagination needs `page_size` (how far each page moves the offset)")
        if self.next_path is not None and self.pagination != "link":
            raise ValueError("`next_path` (a next-page URL in the body) goes with `pagination: link`")
        return self


class SurveySpec(Spec):
    """A form tool's CSV/Excel export (the file is the source's `path`)."""

    format: Literal["auto", "google_forms", "qualtrics", "plain"] = "auto"  # auto: Qualtrics' 3 header rows are recognised, else one header row
    respondent: str | None = None  # column with the respondent id; kept as the example's group so one person's answers never straddle splits
    likert: dict[str, dict[str, float] | Literal["agree5", "agree7", "satisfied5", "frequency5"]] = {}  # column -> answer->number map or a named scale
    multi_select: list[str] = []  # columns whose answers list several choices; split into a list
    separator: str | None = None  # between choices of a multi-select answer; None: the format's own (Google Forms ", ", Qualtrics ",", plain ";")
    explode: list[str] = []  # free-text columns that each become one example (text) per respondent; []: one record per response


class HubSpec(Spec):
    """A Hugging Face Hub dataset by name: downloaded when online, else read from the local cache."""

    dataset: str  # e.g. "stanfordnlp/imdb"
    config: str | None = None  # the dataset's configuration (subset), if it has several
    split: str = "train"  # which of its splits to read (tunesmith splits the rows itself)
    revision: str | None = None  # a tag or commit, for a dataset that must not change under you


class SyntheticSpec(Spec):
    """Generated examples: templates with slots, or a local/remote instruct model writing or paraphrasing."""

    method: Literal["templates", "generate", "paraphrase"] = "templates"  # templates: no model needed, fast and fully controlled
    templates: dict[str, list[str]] = {}  # templates: label -> texts with {slot}s
    slots: dict[str, list[str]] = {}  # templates: slot -> values it is filled with
    prompts: dict[str, str] = {}  # generate: label -> instruction; "*" is used for labels without their own ({label} is filled in)
    per_label: int = Field(50, ge=1)  # examples per label: the balance stays under your control
    model: str = "smollm2-135m"  # generate/paraphrase: a packaged or local instruct model, or the model name at `endpoint`
    endpoint: str | None = None  # an OpenAI-compatible base URL (a teacher model) instead of the local model
    api_key_env: str | None = None  # environment variable holding the endpoint's key (never written anywhere)
    temperature: float = Field(0.9, ge=0, le=2)  # variety matters more than the single likeliest text
    max_new_tokens: int = Field(80, ge=8)  # a review-sized text
    min_chars: int = Field(20, ge=0)  # shorter generations are dropped (empty or cut off)
    max_chars: int = Field(1000, ge=1)  # longer ones too (rambling)
    seed: int = 0  # same settings + seed = same examples (local model and templates)
    in_test: bool = False  # synthetic rows never reach the test split unless this is true: test on real data


COLLECTED_KINDS = ("web", "rest", "survey", "hub", "synthetic")  # each has a sub-section of the same name
SourceKind = Literal[
    "csv", "tsv", "json", "jsonl", "parquet", "excel", "text_folder", "openai_chat", "alpaca",
    "sharegpt", "prompt_completion", "hf_disk", "packaged", "web", "rest", "survey", "hub", "synthetic",
]
FIELD_KEYS = ("text", "label", "score", "messages", "prompt", "chosen", "rejected", "id", "group")
_EXTENSIONS: dict[str, SourceKind] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl",
    ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".xlsx": "excel", ".xlsm": "excel",
}


def _folder_kind(path: Path) -> SourceKind:
    return "hf_disk" if any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")) else "text_folder"


class SourceSpec(Spec):
    """One input: a file, a folder, a saved or hub Hugging Face dataset, a packaged dataset, or a collected
    source (web pages, a REST API, a survey export, synthetic data: the sub-section of that name)."""

    kind: SourceKind | None = None  # None: inferred from the extension (folders: hf_disk or text_folder)
    path: Path | None = None  # relative paths resolve against the config file's folder
    _folder_inferred: bool = PrivateAttr(False)
    name: str | None = None  # packaged dataset (`tunesmith data packaged` lists them)
    subset: str | None = None  # part of a packaged dataset, or split of a saved DatasetDict
    split: SplitName | None = None  # send every row to this split as-is (e.g. your own test file)
    fields: dict[str, str] = {}  # per-source overrides of the task's field expressions
    delimiter: str | None = None  # CSV/TSV; None: sniffed from the first lines
    encoding: str | None = None  # text files; None: detected (UTF-8 first)
    sheet: str | None = None  # Excel sheet; None: the first one
    max_rows: int | None = Field(None, ge=1)  # read only the first N rows: a quick study or trial run on a slice; None: all
    defaults: dict[str, Any] = {}  # field -> value for records that lack it, e.g. {label: sports} for pages of one topic
    web: WebSpec | None = None
    rest: RestSpec | None = None
    survey: SurveySpec | None = None
    hub: HubSpec | None = None
    synthetic: SyntheticSpec | None = None
    http: HttpSpec = HttpSpec()  # web and rest: rate limit, retries, robots.txt, cache

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        return _only(v, FIELD_KEYS, "unknown field(s) {}; allowed: {}")

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, v: str | None) -> str | None:
        # '\t' in single quotes (YAML keeps the backslash) or `tab`: what users write for a tab
        v = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(v, v) if v is not None else None
        if v is not None and (len(v) != 1 or v in "\r\n\""):
            raise ValueError(f"must be one character (a tab: \"\\t\" in double quotes, or tab), got {v!r}")
        return v

    @model_validator(mode="after")
    def _infer_kind(self, info: ValidationInfo) -> SourceSpec:
        _only(self.defaults, FIELD_KEYS, "unknown field(s) {} in defaults; allowed: {}")
        given = [k for k in COLLECTED_KINDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"one source has one kind; found sections {given}: make them separate sources")
        if given:
            if self.kind not in (None, given[0]):
                raise ValueError(f"kind '{self.kind}' does not match the `{given[0]}:` section")
            object.__setattr__(self, "kind", given[0])
            if given[0] == "survey" and self.path is None:
                raise ValueError("a survey source needs `path` (the CSV or Excel export)")
            if given[0] != "survey" and self.path is not None:
                raise ValueError(f"a {given[0]} source collects its rows itself; `path` is not read (remove it)")
            return self
        if self.kind in COLLECTED_KINDS:
            raise ValueError(f"kind '{self.kind}' needs its `{self.kind}:` section")
        if self.name is not None and self.kind in (None, "packaged"):
            object.__setattr__(self, "kind", "packaged")
            return self
        if self.kind == "packaged":
            raise ValueError("kind 'packaged' needs `name` (see `tunesmith data packaged`)")
        if self.path is None:
            raise ValueError("a source needs `path` (a file or folder) or `name` (a packaged dataset)")
        if self.kind is None:
            suffix = self.path.suffix.lower()
            # a relative path is the config's folder's (load_config passes it): `reviews.v2/` beside the config had
            # been looked for in the cwd, and refused from any other folder
            base = (info.context or {}).get("base")
            own = self.path.expanduser()
            found = base / own if base is not None and not own.is_absolute() else own
            if suffix in _EXTENSIONS:
                kind: SourceKind = _EXTENSIONS[suffix]
            elif suffix == "" or found.is_dir():
                kind = _folder_kind(found)
                # a relative folder is looked at again once resolve_paths puts it under the config's folder: here
                # it was looked for in the current directory
                self._folder_inferred = not self.path.is_absolute()
            else:
                raise ValueError(
                    f"cannot tell the format of '{self.path}' from its extension; set `kind` to one of "
                    f"{list(SourceKind.__args__)}"  # type: ignore[attr-defined]
                )
            object.__setattr__(self, "kind", kind)
        return self

    def describe(self) -> str:
        if self.kind == "packaged":
            return f"packaged:{self.name}" + (f"/{self.subset}" if self.subset else "")
        if self.web is not None:
            return f"web:{self.web.sitemap or self.web.urls[0]}" + (f" (+{len(self.web.urls) - 1})" if len(self.web.urls) > 1 else "")
        if self.rest is not None:
            return f"rest:{self.rest.url}"
        if self.hub is not None:
            return f"hub:{self.hub.dataset}" + (f"/{self.hub.config}" if self.hub.config else "") + f"[{self.hub.split}]"
        if self.synthetic is not None:
            return f"synthetic:{self.synthetic.method}"
        return str(self.path)


MissingPolicy = Literal["drop", "fail", "fill"]


class MissingSpec(Spec):
    """What to do with a row whose field is empty or a missing marker."""

    default: Literal["drop", "fail"] = "drop"  # a row without text or label cannot train; it goes to quarantine
    fields: dict[str, MissingPolicy] = {}  # per-field policy, e.g. {label: fail} or {label: fill}
    fill: dict[str, Any] = {}  # value for each field whose policy is `fill`
    na_values: list[str] = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]  # pandas' usual markers

    @model_validator(mode="after")
    def _fill_values(self) -> MissingSpec:
        _only(self.fields, FIELD_KEYS, "unknown field(s) {} in missing.fields; allowed: {}")
        needs = sorted(f for f, p in self.fields.items() if p == "fill" and f not in self.fill)
        if needs:
            raise ValueError(f"policy `fill` needs a value in missing.fill for: {needs}")
        _only(self.fill, FIELD_KEYS, "unknown field(s) {} in missing.fill; allowed: {}")
        # a value without the policy was ignored: the rows it was meant for still went to quarantine
        unused = sorted(f for f in self.fill if self.policy(f) != "fill")
        if unused:
            raise ValueError(f"missing.fill gives a value for {unused}, whose policy is not `fill`; add "
                             + ", ".join(f"{f}: fill" for f in unused) + " to missing.fields")
        return self

    def policy(self, field: str) -> MissingPolicy:
        return self.fields.get(field, self.default)


class CleanSpec(Spec):
    """How text is normalised before deduplication and splitting."""

    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = "NFKC"  # folds full-width/ligature variants so equal texts compare equal
    # None: by task. On for text tasks: scraped text carries markup (the food reviews contain <br />). Off for chat and
    # preference data, whose messages are kept as written (stripped of surrounding blanks, as OpenAI's fine-tuning
    # keeps them): markup, indentation and code such as List<String> in an answer are what the model should learn;
    # true there runs the whole cleaning (markup, unicode_form, normalize_whitespace) on each message
    strip_html: bool | None = None
    normalize_whitespace: bool = True  # collapse runs of blanks; they carry no meaning for a tokenizer
    lowercase: bool = False  # modern tokenizers are cased; only uncased models want this
    min_tokens: int | None = None  # drop examples shorter than this many tokens of the model's tokenizer
    max_tokens: int | None = None  # drop (not truncate) longer examples; None keeps them and training truncates


class DedupSpec(Spec):
    """Duplicate removal: within the data, and (always) across splits."""

    exact: bool = True  # identical examples add nothing and inflate test scores when they straddle splits
    near: bool = True  # so do near-identical ones (re-posts, boilerplate); off keeps them within a split, the leakage check still removes them across splits
    near_threshold: float = Field(0.8, gt=0.0, le=1.0)  # estimated Jaccard similarity of byte 5-grams counted as "near"
    num_perm: int = Field(128, ge=16, le=512)  # MinHash size: similarity error ~ 1/sqrt(128) = 0.09 worst case, verified per pair
    shingle_size: int = Field(5, ge=2, le=8)  # bytes per shingle: long enough to be specific, short enough to survive small edits
    conflicts: Literal["majority", "drop", "first", "mean"] | None = None  # same text, different labels; None: majority (classes) / mean (scores)


class SplitSpec(Spec):
    """How rows are divided into train, validation and test."""

    train: float = Field(0.8, gt=0, lt=1)  # the usual 80/10/10
    validation: float = Field(0.1, gt=0, lt=1)  # enough to pick the best checkpoint and stop early
    test: float = Field(0.1, gt=0, lt=1)  # held out until evaluation: the score the model card reports
    seed: int = 42  # same data + same seed = same split, always
    stratify: bool = True  # equal class (or score-quantile) proportions in every split
    group_by: str | None = None  # field expression; rows sharing a value never straddle splits
    allow_unusual_ratios: bool = False  # explicit override for ratios outside 70-80 / 10-15 / 10-15
    leakage: Literal["remove", "report", "fail"] = "remove"  # duplicates across splits leave the later split

    @model_validator(mode="after")
    def _ratios(self) -> SplitSpec:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1, got {total:g}")
        if not self.allow_unusual_ratios:
            bad = [
                f"{name}={value:g} (expected {lo:g}-{hi:g})"
                for name, value, lo, hi in (
                    ("train", self.train, 0.70, 0.80),
                    ("validation", self.validation, 0.10, 0.15),
                    ("test", self.test, 0.10, 0.15),
                )
                if not lo - 1e-9 <= value <= hi + 1e-9
            ]
            if bad:
                raise ValueError(
                    f"unusual split ratios: {', '.join(bad)}; set data.split.allow_unusual_ratios: true "
                    "if this is intended"
                )
        return self

    def ratio(self, split: SplitName) -> float:
        return float(getattr(self, split))


class AnnotateSpec(Spec):
    """Label fixes applied while preparing: class renames and per-example corrections."""

    label_map: dict[str, str] = {}  # rename or merge classes: {old: new}; applied before validation
    corrections: Path | None = None  # CSV or JSONL with `id` and `label` (or `score`): relabels those examples

    @field_validator("label_map", mode="before")
    @classmethod
    def _numbers_as_labels(cls, v: Any) -> Any:
        """`{1: negative, 5: positive}` (merging star ratings) as the classes "1" and "5", as `task.labels: [1, 5]`
        reads them; it was refused as "Input should be a valid string". Booleans stay refused."""
        def text(x: Any) -> Any:
            return str(x) if isinstance(x, int | float) and not isinstance(x, bool) else x

        return {text(a): text(b) for a, b in v.items()} if isinstance(v, dict) else v

    @field_validator("label_map")
    @classmethod
    def _composed(cls, v: dict[str, str]) -> dict[str, str]:
        return {unicodedata.normalize("NFC", a): unicodedata.normalize("NFC", b) for a, b in v.items()}


class DataSpec(Spec):
    """Where the examples come from and how they are prepared into a dataset version."""

    sources: list[SourceSpec] = Field(min_length=1)  # no default: the files, folders or collected sources to read
    output_dir: Path | None = None  # None: datasets/<project name>, relative to the working directory
    collect_dir: Path | None = None  # collected rows, HTTP cache, failure lists; None: collected/<project name>
    strict: bool = False  # True: any rejected row fails the run instead of going to quarantine
    missing: MissingSpec = MissingSpec()
    clean: CleanSpec = CleanSpec()
    dedup: DedupSpec = DedupSpec()
    annotate: AnnotateSpec = AnnotateSpec()
    split: SplitSpec = SplitSpec()

    @field_validator("output_dir", "collect_dir")
    @classmethod
    def _home(cls, v: Path | None) -> Path | None:
        return _home_expanded(v)


def _home_expanded(path: Path | None) -> Path | None:
    """`~/x` as the user's home: it made a folder named ~ in the cwd, then pyarrow (which expands ~) did not find it."""
    return None if path is None else path.expanduser()


# Token budget per example when model.max_length is unset: the model's context, capped here.
MAX_LENGTH_CAP = 512  # classification/regression: covers typical reviews and tickets; attention cost grows with the square
CHAT_MAX_LENGTH_CAP = 2048  # chat/preference: CPU memory, not the model, limits the longest conversation trained


class ModelSpec(Spec):
    """The base model that is fine-tuned."""

    name: str | None = None  # packaged model (minilm, smollm2-135m) or a local folder; None: chosen by task type
    max_length: int | None = Field(None, gt=0)  # token budget per example; None: the model's context, capped (see token_budget)
    pooling: Literal["auto", "mean", "native"] = "auto"  # auto: mean for sentence encoders (how they were trained), else the architecture's head
    chat_template: str | None = None  # chat: a Jinja template (inline, or a path to a .jinja file) for base models without one; None: the model's own

    def token_budget(self, task: TaskType, context: int | None) -> int:
        """THE length rule, used by data preparation (chat: longer conversations are removed there),
        training (classification truncates to it) and inference (the run manifest records it)."""
        if self.max_length is not None:
            return self.max_length
        cap = CHAT_MAX_LENGTH_CAP if task in GENERATIVE_TASKS else MAX_LENGTH_CAP
        return min(context or cap, cap)


Method = Literal["full", "head", "lora", "dora", "ia3", "prompt_tuning"]
# Learning rates that work per method: adapters and heads start from scratch and need far larger
# steps than full fine-tuning, which only nudges pre-trained weights.
DEFAULT_LR: dict[str, float] = {"full": 5e-5, "head": 2e-3, "lora": 5e-4, "dora": 5e-4, "ia3": 5e-3, "prompt_tuning": 3e-2}
# Causal LMs already speak; SFT only steers them, so smaller steps than for a fresh head (the
# QLoRA/TRL recipes use 1e-4..2e-4 for LoRA and ~2e-5 for full fine-tuning).
CHAT_LR: dict[str, float] = {"full": 2e-5, "lora": 2e-4, "dora": 2e-4, "ia3": 3e-3, "prompt_tuning": 3e-2}
# DPO moves a policy away from its reference; large steps break it (TRL: 1e-6 full, LoRA ~5e-6..5e-5).
DPO_LR: dict[str, float] = {"full": 1e-6, "lora": 5e-5, "dora": 5e-5, "ia3": 5e-4, "prompt_tuning": 1e-2}


# Validation metrics a classification/regression run can keep its best checkpoint by (chat and DPO
# runs keep the lowest validation loss); the first of each is the default.
SEQUENCE_METRICS: dict[str, tuple[str, ...]] = {
    "single_label_classification": ("f1_macro", "accuracy", "loss"),
    "multi_label_classification": ("f1_macro", "f1_micro", "loss"),
    "regression": ("rmse", "mae", "r2", "loss"),
}
LOWER_IS_BETTER = ("rmse", "mae", "loss")


# The largest values a job's hyperparameters may take, here and at the jobs API (which refuses more with a 400).
MAX_JOB_BATCH_SIZE = 256
MAX_LR_MULTIPLIER = 100


class OpenAIHyperparameters(Spec):
    """OpenAI's fine-tuning hyperparameters, accepted as they are in a job request.

    "auto" resolves from the data size the way OpenAI documents it: about 3 epochs, more for tiny
    datasets (at least ~100 examples seen) and fewer for big ones (at most ~25,000); a batch of
    ~0.2% of the examples (1..256); the multiplier scales tunesmith's per-method learning rate.
    """

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"

    @field_validator("n_epochs", "batch_size")
    @classmethod
    def _positive_int(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= MAX_JOB_BATCH_SIZE:
            raise ValueError(f"must be between 1 and {MAX_JOB_BATCH_SIZE}, or 'auto'")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive_float(cls, v: float | str) -> float | str:
        if isinstance(v, float | int) and not 0 < v <= MAX_LR_MULTIPLIER:
            raise ValueError(f"must be above 0 (at most {MAX_LR_MULTIPLIER}), or 'auto'")
        return v

    def resolve(self, n_train: int) -> tuple[int, int, float]:
        """(epochs, batch size, learning-rate multiplier) for a training set of `n_train` examples."""
        epochs = self.n_epochs
        if epochs == "auto":
            epochs = 3
            if n_train * epochs < 100:
                epochs = min(25, max(1, 100 // max(n_train, 1)))
            elif n_train * epochs > 25_000:
                epochs = max(1, 25_000 // n_train)
        batch = self.batch_size if self.batch_size != "auto" else min(256, max(1, round(n_train * 0.002)))
        # Adam's rule of thumb: the learning rate grows with the square root of the batch size
        # (tunesmith.s defaults are tuned at its default batch of 16).
        mult = self.learning_rate_multiplier if self.learning_rate_multiplier != "auto" else round((batch / 16) ** 0.5, 3)
        return int(epochs), int(batch), float(mult)


class PeftSpec(Spec):
    """Adapter settings (train.method lora, dora, ia3 or prompt_tuning)."""

    r: int = Field(16, ge=1)  # LoRA rank: enough capacity for a classification task, 1-2% of the weights
    alpha: int = Field(32, ge=1)  # scale alpha/r = 2, the usual choice
    dropout: float = Field(0.0, ge=0, lt=1)  # PEFT's default: on CPU the dropped copy of every adapted layer's input cost a quarter of a LoRA step; early stopping regularises
    target_modules: list[str] | None = None  # None: chosen per architecture (BERT: query/key/value/dense; Llama: all linear)
    modules_to_save: list[str] | None = None  # None: the head (and BERT's pooler, which sentence encoders never trained)
    num_virtual_tokens: int = Field(20, ge=1)  # prompt tuning: soft prompt length


# transformers' SchedulerType values: a typo is refused with the config's file and line, not by the Trainer after the
# dataset is prepared. Not cosine_with_min_lr, cosine_warmup_with_min_lr or warmup_stable_decay: they need
# lr_scheduler_kwargs (min_lr, num_decay_steps) that no setting gives, so every run with one crashed at its start.
LrScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                      "inverse_sqrt", "reduce_lr_on_plateau", "greedy"]


class TrainSpec(Spec):
    """How the model is trained (`tunesmith train`)."""

    method: Method | None = None  # None: full for encoders (most accurate, affordable on CPU); LoRA on all linear layers for chat
    learning_rate: float | None = Field(None, gt=0)  # None: per method and task (DEFAULT_LR, CHAT_LR, DPO_LR)
    hyperparameters: OpenAIHyperparameters | None = None  # OpenAI's form (n_epochs, batch_size, learning_rate_multiplier); replaces epochs/batch_size/learning_rate
    head_learning_rate: float | None = Field(None, gt=0)  # None: learning_rate; larger lets the new head catch up with the pre-trained body
    epochs: float = Field(3.0, gt=0)  # small datasets need a few passes; early stopping ends sooner
    max_steps: int | None = Field(None, gt=0)  # overrides epochs when set
    batch_size: int = Field(16, ge=1)  # per process; fits CPU memory and gives stable gradients
    grad_accum: int = Field(1, ge=1)  # effective batch = batch_size x grad_accum x processes
    weight_decay: float = Field(0.01, ge=0)  # the BERT recipe
    warmup_ratio: float = Field(0.06, ge=0, lt=1)  # the RoBERTa recipe: avoids wrecking pre-trained weights early
    lr_scheduler: LrScheduler = "linear"  # linear decay after warmup, the BERT recipe
    seed: int = 42  # same seed + same data = same run
    bf16: bool | None = None  # None: on where the hardware has native bf16 (recent GPUs, CPUs with AMX/AVX512-BF16)
    gradient_checkpointing: bool = False  # trades ~30% speed for activation memory; only for big models
    attention_dropout: float | None = Field(0.0, ge=0, lt=1)  # classification/regression: dropout on attention weights; 0 saves a fifth of a CPU step (its random mask is the step's largest); None: the model's own (BERT 0.1)
    hidden_dropout: float | None = Field(0.0, ge=0, lt=1)  # classification/regression: dropout on embeddings, layer outputs and the head; 0 saves its random masks (7% of a CPU step) and scored as well on the demo (0.867 vs 0.863 at 0.1); None: the model's own (BERT 0.1)
    train_embeddings: bool = False  # classification/regression, full: the token table (half of MiniLM's weights) stays pre-trained: its dense gradient and optimizer update cost ~10% of a CPU step, and a few thousand examples touch few of its rows
    evals_per_epoch: int = Field(2, ge=1)  # validation at regular intervals without spending the run on it
    early_stopping_patience: int | None = Field(3, ge=1)  # evaluations without improvement before stopping; None: never
    keep: Literal["best", "last"] = "best"  # the weights a run keeps: its best validation checkpoint, or where training ended (last: what OpenAI's fine-tuning jobs give)
    metric: str | None = None  # classification/regression: metric for the best checkpoint and early stopping (SEQUENCE_METRICS); None: f1_macro (classes) or rmse (scores)
    class_weights: Literal["none", "balanced"] = "none"  # balanced: inverse-frequency loss weights for skewed classes
    group_by_length: bool | None = None  # classification/regression; None: on (batches of similar length: little padding, much less wasted compute)
    save_total_limit: int = Field(2, ge=1)  # keeps the best and the latest checkpoint
    report_to: list[Literal["tensorboard", "mlflow"]] = []  # experiment trackers, off unless asked for
    output_dir: Path | None = None  # None: runs/<project name>
    nproc: int = Field(1, ge=1)  # processes (torchrun DDP: gloo on CPU, NCCL on GPU)
    fsdp: str | None = None  # passed to TrainingArguments.fsdp on GPU clusters, e.g. "full_shard auto_wrap"
    deepspeed: Path | None = None  # a DeepSpeed JSON config, passed through
    packing: bool | None = None  # chat; None: on (short conversations packed into full sequences, attention stays within each: far less padding), off for prompt tuning (PEFT drops the position ids packing needs)
    merge_adapter: bool = False  # write model/ as full weights with the adapter merged in (the adapter stays in adapter/)
    dpo_beta: float = Field(0.1, gt=0)  # DPO: how far the policy may move from the reference (the DPO paper's 0.1)
    init_from: Path | None = None  # classification/regression: a run folder whose weights (or adapter) training continues from (incremental training); None: the base model

    @field_validator("output_dir")
    @classmethod
    def _home(cls, v: Path | None) -> Path | None:
        return _home_expanded(v)

    @model_validator(mode="after")
    def _one_form(self) -> TrainSpec:
        # Compared with the defaults, not "was it written": a saved resolved config lists every field.
        fields = type(self).model_fields
        clash = sorted(k for k in ("epochs", "batch_size", "learning_rate") if getattr(self, k) != fields[k].default) \
            if self.hyperparameters else []
        if clash:
            raise ValueError(f"train.hyperparameters (OpenAI form) replaces {clash}; set one or the other")
        return self

    def lr(self, task: TaskType, multiplier: float = 1.0) -> float:
        table = DPO_LR if task == TaskType.preference else CHAT_LR if task == TaskType.chat else DEFAULT_LR
        assert self.method is not None, "resolved by ProjectConfig"
        if self.learning_rate:
            return self.learning_rate
        if self.method not in table:
            raise ConfigError(f"train.method '{self.method}' does not apply to {task.value} tasks; use one of {sorted(table)}")
        return table[self.method] * multiplier


class EvalSpec(Spec):
    """How a run is scored (`tunesmith evaluate`)."""

    baselines: bool = True  # majority/mean and TF-IDF + linear model on the same test split
    base_model: bool | None = None  # the untuned base beside the tuned model; None: on for chat (free: the adapter switched off), off for classifiers (a head must be trained)
    split: SplitName = "test"  # the held-out split metrics are computed on
    max_new_tokens: int = Field(128, ge=1)  # chat: answer length limit when generating on the test prompts
    max_generations: int | None = Field(200, ge=1)  # chat: test conversations answered (CPU generation is slow); None: all
    samples: int = Field(20, ge=0)  # chat: prompts shown with base and tuned answers side by side in the report


class ServeSpec(Spec):
    """`tunesmith serve`: the HTTP server's limits and access rules (CLI flags map onto these)."""

    host: str = "127.0.0.1"  # local only unless asked: a model server is not public by default
    port: int = Field(8000, ge=0, le=65535)  # 0: any free port (printed at start)
    api_keys: list[str] = []  # bearer keys for the model endpoints; empty: open (local use)
    admin_key: str | None = None  # required for /admin/*; None: admin endpoints are off
    cors_origins: list[str] = []  # browser origins allowed to call the API; empty: CORS off
    max_batch_size: int = Field(32, ge=1)  # requests folded into one forward pass
    batch_wait_ms: float = Field(5.0, ge=0)  # how long the first request waits for company: latency traded for throughput
    max_queue: int = Field(256, ge=1)  # queued requests per model before answering 503 + Retry-After
    timeout_s: float = Field(60.0, gt=0)  # a request still waiting or running after this gets 504
    max_body_bytes: int = Field(1_000_000, ge=1024)  # larger request bodies get 413 before parsing
    max_texts_per_request: int = Field(256, ge=1)  # /v1/predict batch limit
    max_text_chars: int = Field(20_000, ge=1)  # one text; the model truncates at its max_length anyway
    max_tokens: int = Field(512, ge=1)  # cap on generated tokens per chat/completion request
    classifier_engine: Literal["auto", "openvino-bf16", "torch-bf16", "onnxruntime", "torch"] = "auto"  # auto: a classifier in bf16 on a CPU with native bf16, on OpenVINO (minilm on Zen 4: 1.36x PyTorch's bf16, 1.7x onnxruntime fp32; fp32's labels), else PyTorch's (2x onnxruntime fp32 with AMX), else onnxruntime fp32 on a CPU (the run converted to ONNX once, PyTorch's predictions, 1.25x PyTorch on minilm), PyTorch on a GPU or where neither applies
    chat_engine: Literal["auto", "llama.cpp", "ctranslate2", "transformers"] = "auto"  # auto: llama.cpp (F16, the run's greedy answers, 4x+ faster on a CPU, continuous batching), else CTranslate2 int8, else transformers
    chat_kv_tokens: int = Field(16384, ge=256)  # llama.cpp: KV cache all concurrent answers of a chat model share (~380 MB on SmolLM2-135M); requests wait for room, and no answer runs longer
    registry_poll_s: float = Field(1.0, gt=0)  # `serve --model`: how often the store is asked what is in production
    log_inputs: bool = True  # keep each request's input and answer with it (feedback joins them); off for sensitive data
    log_retention_days: float = Field(30.0, gt=0)  # logged inputs and answers are cleared after this; ids and timings stay
    drift_every_s: float = Field(60.0, gt=0)  # how often live traffic is compared with the training data (drift gauges in /metrics)

    @field_validator("api_keys", "admin_key")
    @classmethod
    def _no_blank_key(cls, value: Any) -> Any:
        """`--api-key "$KEY"` with KEY unset: a server that looked protected let in a bearer token of blanks. The key
        itself is never quoted (a typo's message had listed every key): its position says which."""
        keys = [value] if isinstance(value, str) else value or []
        for i, key in enumerate(keys, 1):
            if not key.strip() or key != key.strip():
                which = f"key {i} (of {len(keys)})" if not isinstance(value, str) else "the key"
                raise ValueError(f"{which} must not be empty or start or end with blanks (an unset variable?)")
        return value


class JobsSpec(Spec):
    """The OpenAI-compatible fine-tuning API (`tunesmith serve --db`, `tunesmith worker`): store and limits."""

    db: str | None = None  # database URL; None: an SQLite file in TUNESMITH_HOME (~/.local/share/tunesmith)
    base_models: list[str] = ["smollm2-135m"]  # what a job's `model` may name: packaged names, local causal-LM folders, or ALIAS=MODEL (an OpenAI name your scripts use, trained on MODEL)
    organization: str = "tunesmith"  # the ORG part of ft:BASE:ORG:SUFFIX:ID names and the jobs' organization_id
    max_file_bytes: int = Field(512 * 1024**2, ge=1)  # OpenAI's limit for a fine-tuning upload (512 MB)
    heartbeat_s: float = Field(5.0, gt=0)  # how often a worker tells the store it is alive (and reads cancel/pause)
    stale_after_s: float = Field(60.0, gt=0)  # a running job with an older heartbeat is taken over, resumed from its last checkpoint
    poll_s: float = Field(1.0, gt=0)  # how often an idle worker looks for queued jobs
    checkpoints: int = Field(3, ge=1)  # checkpoints a job keeps as servable models (OpenAI keeps the last 3 epochs')
    max_attempts: int = Field(3, ge=1)  # workers that may die holding one job before it fails (one that kills its worker, out of memory say, would otherwise take down every worker in turn)

    def base_model(self, requested: str) -> str | None:
        """The model a job asking for `requested` trains: itself when offered, its alias's target, else None."""
        for entry in self.base_models:
            alias, _, target = entry.partition("=")
            if requested == alias:
                return target or alias
        return None


class SearchDim(Spec):
    """One dimension of a search space: a range (`low`..`high`, optionally `log` or with a `step`) or `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False  # sample evenly in log space: learning rates and weight decays span decades
    step: float | None = Field(None, gt=0)  # a grid within the range (integers: step 1)
    integer: bool = False  # whole numbers (epochs, ranks, batch sizes given as a range)
    choices: list[Any] | None = None  # a categorical: methods, schedulers, target-module sets

    @model_validator(mode="after")
    def _one_kind(self) -> SearchDim:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give either choices or a range (low/high/log/step), not both")
            if not self.choices:
                raise ValueError("choices is empty: list at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices)")
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0 (got {self.low:g}); log(0) is not a number")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples a log range continuously)")
        return self


# Where a search may look: config fields a trial can set (dotted, as in --set overrides).
TUNABLE = ("train.method", "train.learning_rate", "train.epochs", "train.batch_size", "train.weight_decay",
           "train.warmup_ratio", "train.lr_scheduler", "train.head_learning_rate", "train.grad_accum",
           "peft.r", "peft.alpha", "peft.dropout", "peft.target_modules", "model.max_length")
TUNE_OBJECTIVES = ("latency_ms", "model_mb", "trainable_params")  # secondary objectives, all minimised


def without_password(url: str) -> str:
    """A database URL with its password as ***, in the user part or in the query (libpq takes ?password= too)."""
    url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"([?&](?:ssl)?password=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


class TuneSpec(Spec):
    """`tunesmith tune`: an Optuna study over `space`, each trial a real training run judged on validation."""

    space: dict[str, SearchDim] = {}  # dotted config field -> its range or choices (TUNABLE lists what may vary)
    trials: int = Field(20, ge=1)  # enough for TPE to leave its 10 random start-up trials behind
    timeout_s: float | None = Field(None, gt=0)  # stop starting new trials after this; None: run all trials
    metric: str | None = None  # the validation metric optimised; None: train.metric, else the task's default
    objectives: list[Literal["latency_ms", "model_mb", "trainable_params"]] = []  # extra objectives (minimised): a Pareto front with NSGA-II
    sampler: Literal["tpe", "random", "cmaes", "qmc", "nsga2"] | None = None  # None: TPE, NSGA-II with extra objectives
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = "successive_halving"  # keeps the better half at each rung: the same best in 49% of the compute on bench/tune_bench.py (median: 55-66% on replayed curves)
    reduction_factor: int = Field(2, ge=2)  # successive halving / hyperband: 1 in rf trials goes on at each rung; 2 judges at evaluations 1, 2, 4, 8 (Optuna's 4 only at 1 and 4 of 8)
    prune_on: Literal["loss", "metric"] = "loss"  # the curve pruners compare: validation loss moves from the first steps, while F1 or accuracy sit at the majority-class value until a model crosses the boundary (bench/tune_bench.py)
    startup_trials: int = Field(3, ge=0)  # median pruner: trials that always finish before it compares curves
    grace_evaluations: int = Field(0, ge=0)  # validation results a trial reports before it may be pruned; 0: the validation loss already separates slow starters from dead trials at the first one (raise it with prune_on: metric)
    seed: int = 42  # same seed, same suggested configurations (on one worker)
    study: str | None = None  # study name in the storage; None: the project name
    storage: str | None = None  # database URL; None: the tunesmith store (SQLite in TUNESMITH_HOME)

    @field_serializer("storage")
    def _storage_without_password(self, storage: str | None) -> str | None:
        """Written configs (dataset manifests, runs' config.json, Docker exports) are moved and shared: the storage's
        password is kept out of them. The study itself opens the URL as given."""
        return None if storage is None else without_password(storage)

    @field_validator("space")
    @classmethod
    def _tunable(cls, v: dict[str, SearchDim]) -> dict[str, SearchDim]:
        return _only(v, TUNABLE, "cannot tune {}; tunable fields: {}")


class RetrainSpec(Spec):
    """`tunesmith retrain`: a new version from the production one plus the corrections users sent."""

    mode: Literal["full", "incremental"] = "full"  # full: from the base on all data (safest); incremental: from production's weights (cheaper)
    min_corrections: int = Field(20, ge=1)  # --if-needed: retrain once this many new corrections arrived since the production version
    drift_threshold: float | None = Field(0.25, gt=0)  # --if-needed: or when the inputs' drift score (PSI) since then reaches this; None: corrections only
    feedback_holdout: float = Field(0.3, ge=0, lt=1)  # share of corrections kept out of training to judge the candidate on (0: judge on the test split only)
    replay: float = Field(2.0, ge=0)  # incremental: old training examples mixed in per new example, so the model does not forget them
    incremental_lr_scale: float = Field(0.5, gt=0, le=1)  # incremental: a gentler learning rate than a fresh run (the weights are already tuned)
    incremental_epochs: float = Field(3.0, gt=0)  # incremental: passes over the new examples and their replay sample (a small set: a few passes to learn it)
    promote: Literal["if_better", "ab_test", "never"] = "if_better"  # what a candidate that passes the rule gets
    max_test_drop: float = Field(0.01, ge=0)  # the rule: the test metric may fall by at most this (and not significantly)
    require_feedback_gain: bool = True  # the rule: and it must be significantly better on the held-out corrections
    alpha: float = Field(0.05, gt=0, lt=0.5)  # significance level of the paired tests (McNemar, Wilcoxon)


PACKAGED_MODEL_NAMES = ("minilm", "smollm2-135m")  # models/catalog.py's PACKAGED_MODELS: any other model.name is a folder
# model.name as written, by the config-relative path resolve_paths made of it: errors quote what the user wrote
# (`HuggingFaceTB/SmolLM2-135M`), not a folder they never named
WRITTEN_MODEL_NAMES: dict[str, str] = {}
DEFAULT_MODEL = {TaskType.chat: "smollm2-135m", TaskType.preference: "smollm2-135m"}  # causal LM; the rest gets the encoder
DEFAULT_ENCODER = "minilm"  # small real encoder that trains on 2 CPU cores in minutes


class ProjectConfig(Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # used in folder names
    task: TaskSpec = TaskSpec()
    data: DataSpec
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    peft: PeftSpec = PeftSpec()
    eval: EvalSpec = EvalSpec()
    tune: TuneSpec = TuneSpec()
    retrain: RetrainSpec = RetrainSpec()

    @model_validator(mode="after")
    def _defaults_by_task(self) -> ProjectConfig:
        if self.model.name is None:
            self.model.name = DEFAULT_MODEL.get(self.task.type, DEFAULT_ENCODER)
        generative = self.task.type in GENERATIVE_TASKS
        if self.train.method is None:
            self.train.method = "lora" if generative else "full"
        if self.data.clean.strip_html is None:
            self.data.clean.strip_html = not generative
        if self.data.dedup.conflicts is None:
            self.data.dedup.conflicts = "mean" if self.task.type == TaskType.regression else "majority"
        return self  # a method or conflict rule the task cannot use is refused by inapplicable(), at its own line

    def text_positions(self, context: int | None) -> int | None:
        """The model's positions a text may fill: its context, less prompt tuning's virtual tokens, which come first."""
        if self.train.method != "prompt_tuning" or context is None:
            return context
        return context - self.peft.num_virtual_tokens

    def token_budget(self, context: int | None) -> int:
        """model.token_budget for this task, within the positions a text may fill (prompt tuning's virtual tokens
        come first: a text filling the whole context overran BERT's position table mid-training)."""
        budget = self.model.token_budget(self.task.type, context)
        room = self.text_positions(context)
        if room is None:
            return budget
        if budget > room and self.model.max_length is not None:
            # refused before any compute: a longer batch crashed training with a shape error about position embeddings
            what = f"model.max_length ({self.model.max_length})" + (
                f" and peft.num_virtual_tokens ({self.peft.num_virtual_tokens})" if self.train.method == "prompt_tuning" else "")
            raise ConfigError(f"{what} exceed the model's context of {context} tokens; set model.max_length to {room} "
                              "or less")
        return min(budget, room)

    def packs(self) -> bool:
        """Are chat conversations packed into full rows (train.packing, resolved)?"""
        if self.task.type != TaskType.chat or self.train.packing is False:
            return False
        return self.train.packing is True or self.train.method != "prompt_tuning"

    def inapplicable(self) -> list[tuple[str, str]]:
        """(field, why) for each setting given a value that the chosen task or method never reads.

        A setting is "given" when it differs from its default (a saved, resolved config lists every
        field, so "was it written" cannot be told); a silently ignored setting would look like it
        took effect, so parse_config refuses these.
        """
        task, method = self.task.type, self.train.method
        generative = task in GENERATIVE_TASKS
        kind = f"{task.value} tasks"
        classes = task in (TaskType.single_label, TaskType.multi_label)
        rules: list[tuple[Spec, str, bool, str]] = [  # (section, field, applies, why not)
            # a separator without type: multi_label_classification made "food|price" a class of its own
            (self.task, "label_separator", task == TaskType.multi_label,
             "label_separator splits the labels of multi_label_classification; set task.type to it if rows hold several"),
            (self.task, "labels", classes, f"{kind} have no classes"),
            (self.train, "head_learning_rate", not generative, f"{kind} train the language model itself; there is no new head"),
            (self.train, "class_weights", task == TaskType.single_label, "class weights apply to single-label classification"),
            (self.train, "group_by_length", not generative, f"{kind} batch conversations by packing (train.packing)"),
            (self.train, "metric", not generative, f"{kind} keep the checkpoint with the lowest validation loss"),
            (self.train, "packing", task == TaskType.chat, "packing applies to chat (SFT) tasks"),
            (self.train, "dpo_beta", task == TaskType.preference, "dpo_beta applies to preference (DPO) tasks"),
            (self.train, "init_from", not generative, f"{kind} continue from a run through their base model (model.name)"),
            (self.train, "merge_adapter", generative and method in ("lora", "dora", "ia3"),
             "merge_adapter applies to chat adapters that merge into weights (lora, dora, ia3; prompt tuning's virtual "
             "tokens do not); merge other runs with `tunesmith export RUN --format merged`"),
            (self.train, "attention_dropout", not generative, f"{kind} train with the model's own dropout"),
            (self.train, "hidden_dropout", not generative, f"{kind} train with the model's own dropout"),
            (self.train, "train_embeddings", not generative and method == "full",
             "the token table trains only in full fine-tuning of a classifier or regressor"),
            (self.peft, "r", method in ("lora", "dora"), f"peft.r is LoRA's rank; train.method is {method}"),
            (self.peft, "alpha", method in ("lora", "dora"), f"peft.alpha is LoRA's scale; train.method is {method}"),
            (self.peft, "dropout", method in ("lora", "dora"), f"peft.dropout is LoRA's; train.method is {method}"),
            (self.peft, "target_modules", method in ("lora", "dora", "ia3"), f"train.method is {method}"),
            (self.peft, "modules_to_save", method in ("lora", "dora", "ia3"), f"train.method is {method}"),
            (self.peft, "num_virtual_tokens", method == "prompt_tuning", f"train.method is {method}, not prompt_tuning"),
            (self.model, "pooling", not generative, f"{kind} have no classification head to pool for"),
            (self.model, "chat_template", generative, "chat templates apply to chat and preference tasks"),
            (self.eval, "max_new_tokens", generative, f"{kind} generate no answers"),
            (self.eval, "max_generations", generative, f"{kind} generate no answers"),
            (self.eval, "samples", generative, f"{kind} generate no answers"),
            (self.tune, "startup_trials", self.tune.pruner == "median",
             f"startup_trials is the median pruner's; tune.pruner is {self.tune.pruner}"),
            (self.tune, "reduction_factor", self.tune.pruner in ("successive_halving", "hyperband"),
             f"reduction_factor is successive halving's and hyperband's; tune.pruner is {self.tune.pruner}"),
        ]
        sections = {id(self.train): "train", id(self.peft): "peft", id(self.model): "model", id(self.eval): "eval",
                    id(self.task): "task", id(self.tune): "tune"}
        found = []
        # Here, not in the model validator: an error raised there was reported at "file:1: (top level)"
        if generative and method == "head":
            found.append(("train.method", f"'head' needs a classification head; {kind} train the language model "
                                          "itself (use lora or full)"))
        conflicts, regression = self.data.dedup.conflicts, task == TaskType.regression
        if conflicts in ("mean", "majority") and (conflicts == "mean") != regression:
            found.append(("data.dedup.conflicts", f"'{conflicts}' does not apply to {kind}; use "
                                                  f"{'mean' if regression else 'majority'}, drop or first"))
        for section, name, applies, why in rules:
            value = getattr(section, name)
            if not applies and value != type(section).model_fields[name].default:
                found.append((f"{sections[id(section)]}.{name}", f"does not apply here ({why}); remove it (got {value!r})"))
        if method == "prompt_tuning" and self.train.packing:
            found.append(("train.packing", "prompt tuning cannot pack conversations: PEFT drops the position ids that keep "
                                           "packed conversations apart, and the virtual tokens precede only a row's first; "
                                           "leave it unset (off for prompt tuning) or false"))
        allowed = SEQUENCE_METRICS.get(task.value, ())
        if self.train.metric is not None and not generative and self.train.metric not in allowed:
            found.append(("train.metric", f"'{self.train.metric}' is not a validation metric of {kind}; "
                                          f"choose one of {list(allowed)}"))
        produced = allowed if not generative else ("loss",)
        if self.tune.metric is not None and self.tune.metric not in produced:
            found.append(("tune.metric", f"'{self.tune.metric}' is not a validation metric of {kind}; "
                                         f"choose one of {list(produced)}"))
        return found

    @property
    def dataset_dir(self) -> Path:
        return self.data.output_dir or Path("datasets") / self.name

    @property
    def run_dir(self) -> Path:
        return self.train.output_dir or Path("runs") / self.name

    def resolve_paths(self, base: Path) -> ProjectConfig:
        """Make relative paths absolute against the config file's folder (not the caller's cwd)."""

        def fix(p: Path | None) -> Path | None:
            if p is None:
                return None
            p = Path(os.path.expanduser(p))  # `~/models/x` was glued under the config's folder
            return p if p.is_absolute() else (base / p).resolve()

        for src in self.data.sources:
            src.path = fix(src.path)
            if src._folder_inferred and src.path is not None:
                src.kind = _folder_kind(src.path)
                src._folder_inferred = False
            gen = src.synthetic
            if gen is not None and gen.model not in PACKAGED_MODEL_NAMES and gen.endpoint is None:
                gen.model = str(fix(Path(gen.model)))  # a local model folder, beside the config like model.name
        self.data.annotate.corrections = fix(self.data.annotate.corrections)
        self.train.deepspeed = fix(self.train.deepspeed)
        self.train.init_from = fix(self.train.init_from)
        template = self.model.chat_template
        if template and "{" not in template:  # a file path, not an inline template
            self.model.chat_template = str(fix(Path(template)))
        name = self.model.name
        if name is not None and not name.strip():  # Path("") is the cwd: a model folder there had been used silently
            raise ConfigError(f"model.name is blank; give a packaged model ({', '.join(PACKAGED_MODEL_NAMES)}) or a "
                              "model folder, or leave it out (null) for the task's default")
        if name in PACKAGED_MODEL_NAMES and (base / name).is_dir():
            # The packaged name wins (it always has); a folder so named beside the config had been ignored silently.
            print(f"warning: model.name '{name}' is the packaged model; the folder {base / name} beside the config is "
                  f"not used (set model.name: ./{name} to use it)", file=sys.stderr, flush=True)
        if name and name not in PACKAGED_MODEL_NAMES:
            # Any other name is a folder beside the config, like a data source: a bare `tinybert` had been looked
            # up in the cwd, and a same-named folder there used silently. Errors quote the name as written.
            self.model.name = str(fix(Path(name)))
            WRITTEN_MODEL_NAMES[self.model.name] = name
        # A shared study's database, like a data source: two workers started from other folders opened two files
        # and ran two studies, each unaware of the other.
        self.tune.storage = _sqlite_beside(self.tune.storage, base)
        return self


def _sqlite_beside(url: str | None, base: Path) -> str | None:
    """A SQLite URL with a relative file path made absolute against `base`; any other URL (PostgreSQL, in-memory,
    ~/..., which the store expands, or one that does not parse, which the study reports) as given."""
    if not url or not url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy's URL errors vary by cause
        return url
    database = parsed.database
    if not database or database == ":memory:" or database.startswith(("~", "file:")) or Path(database).is_absolute():
        return url
    return parsed.set(database=str((base / database).resolve())).render_as_string(hide_password=False)


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths whose values differ between two dumped configs, as `path: old -> new` lines."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


@functools.cache
def _reasons() -> dict[tuple[str, str], str]:
    """(class, field) -> the reason written beside the field's default in this file: its trailing comment,
    else the comment lines just above it. Read from the source so the reason lives in one place only."""
    try:
        source = inspect.getsource(sys.modules[__name__])
    except (OSError, TypeError):  # no source shipped (a frozen build): the config is shown without reasons
        return {}
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
    lines = source.splitlines()
    found = {}
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for node in cls.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            trailing = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
            above, n = [], node.lineno - 1
            while n in comments and lines[n - 1].lstrip().startswith("#"):
                above.insert(0, comments[n])
                n -= 1
            if trailing or above:
                found[(cls.name, node.target.id)] = " ".join(trailing or above)
    return found


def _flow(value: Any) -> str:
    """A dumped value as one line of YAML (double-quoted where a plain form would span lines)."""
    text = yaml.safe_dump([value], default_flow_style=True, width=float("inf"), allow_unicode=True).strip()
    if "\n" in text:
        text = yaml.safe_dump([value], default_flow_style=True, width=float("inf"), allow_unicode=True,
                              default_style='"').strip()
    return text[1:-1]


def _section_type(field: Any) -> type[Spec] | None:
    """The config section a field holds (`peft: PeftSpec`, `hyperparameters: OpenAIHyperparameters | None`), or None."""
    return next((t for t in (field.annotation, *typing.get_args(field.annotation))
                 if isinstance(t, type) and issubclass(t, Spec)), None)


def annotated_yaml(spec: Spec, indent: int = 0) -> str:
    """The resolved config as YAML, each field with its reason as a comment: every default and why, in one
    place (`tunesmith config show`). Parses back to `spec.model_dump(mode="json")`."""
    pad, dumped, out = " " * indent, spec.model_dump(mode="json"), []
    for name, field in type(spec).model_fields.items():
        value = getattr(spec, name)
        section = value if isinstance(value, Spec) else None
        why = _reasons().get((type(spec).__name__, name))
        kind = _section_type(field)
        if why is None and kind is not None and kind.__doc__:
            why = kind.__doc__.strip().splitlines()[0]  # a section's reason is its class's summary line
        comment = f"  # {why}" if why else ""
        if section is not None:
            out.append(f"{pad}{name}:{comment}\n" + annotated_yaml(section, indent + 2))
        elif isinstance(value, list) and value and all(isinstance(v, Spec) for v in value):
            out.append(f"{pad}{name}:{comment}")
            for item in value:  # a block list of sections: "- " in place of the first field's indent
                block = annotated_yaml(item, indent + 4)
                out.append(f"{pad}  - {block[indent + 4:]}")
        else:
            out.append(f"{pad}{name}: {_flow(dumped[name])}{comment}")
    return "\n".join(line.rstrip("\n") for line in out) + "\n"


def data_home() -> Path:
    """Where the embedded store lives: its SQLite file, uploaded files, jobs' run folders (TUNESMITH_HOME moves it)."""
    return _folder_from_env("TUNESMITH_HOME", "~/.local/share/tunesmith")


def cache_dir() -> Path:
    """Where converted models and fetched packaged data live (set TUNESMITH_CACHE to move it)."""
    return _folder_from_env("TUNESMITH_CACHE", "~/.cache/tunesmith")


def _folder_from_env(name: str, default: str) -> Path:
    """The folder an environment variable names, else `default`. Set but blank (`export TUNESMITH_HOME=$SHARED` with
    SHARED unset) is refused: Path("") is the cwd, where the store had silently gone."""
    value = os.environ.get(name)
    if value is not None and not value.strip():
        raise ConfigError(f"{name} is set but empty; unset it or give a folder")
    return Path(value or default).expanduser()


# ---------------------------------------------------------------------------------------------
# Loading: YAML with line numbers, dotted overrides, errors that name the file, line and field.


def _line_map(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, str(i)))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML, so numbers and booleans keep their type, except where YAML
    would lose the text typed: see _typed_value)."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.path=value")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{override}' has an empty key")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override '{override}': '{'.'.join(parts[: i + 1])}' is not a list index")
            node = node[int(part)]
        else:
            if node.get(part) is None:  # `hyperparameters: null`, as config show and a run's config.json write it
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict | list):
                raise ConfigError(f"override '{override}': '{'.'.join(parts[: i + 1])}' is not a section")
    try:
        value = _typed_value(raw)
        if isinstance(value, dict | list) and _wants_text(parts):
            value = raw.strip()  # `Subject: {subject}` or `{review}` is text here, not YAML's mapping
    except yaml.YAMLError as err:
        if _wants_text(parts):
            value = raw.strip()  # `a: b: c` is no YAML, but it is the text typed
        else:
            raise ConfigError(f"override '{override}': the value is not valid YAML ({getattr(err, 'problem', err)}); "
                              f"to mean it as text, quote it: --set \"{key.strip()}='{raw}'\"") from None
    if isinstance(node, list):
        if not parts[-1].isdigit() or int(parts[-1]) >= len(node):
            raise ConfigError(f"override '{override}': '{'.'.join(parts)}' is not a list index")
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _wants_text(parts: list[str]) -> bool:
    """Whether the setting at `parts` takes only text (no mapping, list or section), so that a value YAML reads as
    a mapping (`Route a ticket: billing or tech`) is the text typed. False where the path names no known setting."""
    kind: Any = ProjectConfig
    for part in parts:
        branches = [t for t in (typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType)
                                else (kind,)) if t is not type(None)]
        kind = branches[0] if len(branches) == 1 else None
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(part)
            kind = field.annotation if field is not None else None
        elif typing.get_origin(kind) in (list, dict) and (part.isdigit() or typing.get_origin(kind) is dict):
            kind = typing.get_args(kind)[-1]
        else:
            return False
    return kind is str or str in typing.get_args(kind) and all(
        t is type(None) or t is str or typing.get_origin(t) is Literal for t in typing.get_args(kind))


def _typed_value(raw: str) -> Any:
    """`raw` as YAML reads it, or the text itself where YAML reads an unquoted value as nothing or as other text:
    `|` is an empty block scalar, `#` a comment (None), and `Food reviews #2` lost its `#2`. `null`, `~` and
    quoted or tagged values keep their YAML meaning."""
    text = raw.strip()
    if not text:
        return ""
    value = yaml.safe_load(raw)
    explicit = text in ("~", "null", "Null", "NULL") or text[0] in "'\"!"
    if not explicit and (value is None or (isinstance(value, str) and value != text)):
        return text
    return value


def override_of(key: str, value: Any) -> str:
    """The `key=value` that apply_override reads back as `value` (None as null, a list as a list, a string that YAML
    would read otherwise quoted)."""
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        if plain:
            return f"{key}={value}"
    return f"{key}={json.dumps(value, separators=(',', ':'))}"


def _override_paths(overrides: list[str] | tuple[str, ...]) -> dict[tuple[str, ...], str]:
    """Each override's dotted key as a path (as apply_override splits it) -> the override as typed."""
    return {tuple(p for p in o.split("=", 1)[0].strip().split(".") if p): o for o in overrides}


def _where(loc: tuple[str, ...], source: str, lines: dict[tuple[str, ...], int],
           overrides: dict[tuple[str, ...], str]) -> str:
    """Where a problem at `loc` was written: the `--set` that wrote that field (the file's line would point
    at a value the override replaced, or at an unrelated line), else the file's nearest line, naming the
    overrides inside a section the file does write (a section-wide check such as the split ratios)."""
    inside = []
    for path, override in overrides.items():
        if path and loc[: len(path)] == path:
            return f"--set {override}"  # the override wrote this field or a section holding it
        if loc and path[: len(loc)] == loc:
            if loc not in lines:
                return f"--set {override}"  # the section exists only through the override
            inside.append(f"--set {override}")
    line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
    return (f"{source}:{line}" if line else source) + (f" (with {', '.join(inside)})" if inside else "")


# What pydantic appends to a location for each branch of a union (`n_epochs.int`, `n_epochs.literal['auto']`)
_UNION_BRANCH = re.compile(r"int|float|str|bool|none|(literal|list|dict|nullable|function-\w+|constrained-\w+)\[.*\]")
_KINDS = {"int": "an integer", "float": "a number", "string": "a string", "bool": "true or false", "dict": "a mapping",
          "list": "a list"}  # by the first word of pydantic's error type


def _field_loc(loc: tuple[Any, ...], data: Any) -> tuple[str, ...]:
    """The user's own path to a field: pydantic's union-branch names dropped, unless `data` (what was validated)
    has a key of that name there."""
    path, node = [], data
    for part in loc:
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int):
            node = node[part]  # a list index pydantic names is within the list
        elif isinstance(part, str) and _UNION_BRANCH.fullmatch(part):
            continue
        else:
            node = None
        path.append(str(part))
    return tuple(path)


def _either(errors: list[Any]) -> str:
    """One message for a value that fits no branch of a union: "Input should be an integer or 'auto'"."""
    kinds: list[str] = []
    for e in errors:
        kind = e["ctx"]["expected"] if e["type"] == "literal_error" else _KINDS.get(e["type"].split("_")[0])
        if kind is None:  # a branch that failed on something other than its type: say each
            return "; ".join(x["msg"].removeprefix("Value error, ") for x in errors)
        if kind not in kinds:
            kinds.append(kind)
    return "Input should be " + (f"{', '.join(kinds[:-1])} or {kinds[-1]}" if len(kinds) > 1 else kinds[0])


def format_validation_error(err: ValidationError, source: str, lines: dict[tuple[str, ...], int],
                            overrides: dict[tuple[str, ...], str] | None = None, data: Any = None) -> str:
    # A value no branch of a union takes fails once per branch: one problem, at the field the user wrote
    problems: dict[tuple[str, ...], list[Any]] = {}
    for e in err.errors():
        problems.setdefault(_field_loc(e["loc"], data), []).append(e)
    out = [f"{source}: invalid configuration ({len(problems)} problem{'s' * (len(problems) > 1)})"]
    for loc, errors in problems.items():
        e = errors[0]
        where = _where(loc, source, lines, overrides or {})
        field = ".".join(loc) or "(top level)"
        got = f" (got {_shown(loc, e['input'])})" if e["type"] not in ("missing",) and not isinstance(e["input"], dict) \
            and "headers" not in loc else ""  # headers: an Authorization header's token
        msg = e["msg"].removeprefix("Value error, ") if len(errors) == 1 else _either(errors)
        if e["type"] == "extra_forbidden":
            msg = _unknown_key(globals().get(err.title), loc)
        elif e["type"] == "string_type" and isinstance(e["input"], bool):  # labels: [no, yes] reads as [False, True]
            msg += "; YAML reads unquoted yes/no/on/off/true/false as booleans: quote it ('no')"
        elif e["type"] == "string_type" and len(errors) == 1 and isinstance(e["input"], dict | list):  # `a: b`, `{x}`
            msg += f"; YAML read a {'mapping' if isinstance(e['input'], dict) else 'list'} (`: ` or braces): quote the text"
        out.append(f"  {where}: {field}: {msg}{got}")
    return "\n".join(out)


def _shown(loc: tuple[str, ...], value: Any) -> str:
    """A refused value as an error may quote it (its repr): a database URL without its password."""
    if not loc or loc[-1] not in ("storage", "db"):
        return repr(value)
    return repr([without_password(v) if isinstance(v, str) else v for v in value] if isinstance(value, list)
                else without_password(value) if isinstance(value, str) else value)


def _unknown_key(root: Any, loc: tuple[str, ...]) -> str:
    """The message for a misspelt key: pydantic's "Extra inputs are not permitted" says neither that the
    setting is unknown nor what was meant; this names the closest settings of that section."""
    spec = root if isinstance(root, type) and issubclass(root, Spec) else None
    for part in loc[:-1]:
        field = spec.model_fields.get(part) if spec else None
        if field is None:
            if part.isdigit():
                continue  # a list index: the same section type
            return "unknown setting"
        spec = _section_type(field)
    if spec is None:
        return "unknown setting"
    known = list(spec.model_fields)
    close = difflib.get_close_matches(loc[-1], known, n=3, cutoff=0.6)
    if close:
        return f"unknown setting; did you mean {' or '.join(close)}?"
    return f"unknown setting; this section has {', '.join(known)}"


def parse_config(data: dict[str, Any], source: str = "<config>", text: str = "",
                 overrides: list[str] | tuple[str, ...] = (), base: Path | None = None) -> ProjectConfig:
    """Validate a config (file, overrides or API payload): types and ranges, then settings that the
    chosen task or method would ignore. Errors name the source, line (or the `overrides` entry already
    applied to `data`) and dotted field. `base`: the folder relative source paths are looked at in (the cwd: None)."""
    changed = _override_paths(overrides)
    try:
        cfg = ProjectConfig.model_validate(data, context={"base": base})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, _line_map(text), changed, data)) from None
    problems = cfg.inapplicable()
    if problems:
        lines = _line_map(text)
        out = [f"{source}: invalid configuration ({len(problems)} problem{'s' * (len(problems) > 1)})"]
        for field, why in problems:
            loc = tuple(field.split("."))
            where = _where(loc, source, {loc: lines[loc]} if loc in lines else {}, changed)  # its own line only
            out.append(f"  {where}: {field}: {why}")
        raise ConfigError("\n".join(out))
    return cfg


def _duplicate_keys(text: str) -> list[str]:
    """`line: field: given twice` for each key written twice in one mapping: YAML loaders keep the last
    silently, so an edit made to the first copy would never take effect."""
    found: list[str] = []

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name, line = str(key.value), key.start_mark.line + 1
                if name in first and name != "<<":  # `<<` merges are YAML's own way to repeat a key
                    found.append(f"{line}: {'.'.join((*path, name))}: given twice (first on line {first[name]}); keep one")
                first.setdefault(name, line)
                walk(value, (*path, name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, str(i)))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return found


def _empty_sections_as_defaults(data: dict[str, Any], spec: type[BaseModel]) -> None:
    """A section left empty (`train:` with every key commented out) is YAML's null: read as the section's defaults, as
    if left out; it was refused as "not a valid dictionary", and `--set train.epochs=2` as "not a section". Only
    sections that cannot be null (a Spec or a mapping), so a null that means something (`hyperparameters:`) stays."""
    for key, value in data.items():
        field = spec.model_fields.get(key)
        if field is None:
            continue
        kind = field.annotation
        section = isinstance(kind, type) and issubclass(kind, BaseModel)
        if value is None and (section or typing.get_origin(kind) is dict):
            data[key] = {}
        elif section and isinstance(value, dict):
            _empty_sections_as_defaults(value, kind)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ProjectConfig:
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.y*ml"))[:3]
        raise ConfigError(f"{path} is a folder, not a config file: give the config's YAML file"
                          + (f" ({', '.join(found)} here)" if found else ""))
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason}); "
                          "a config is a YAML file saved as UTF-8") from None
    try:
        data = yaml.safe_load(text)
        duplicates = _duplicate_keys(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or err
        hint = "; indent with spaces: YAML does not allow tabs" if "\\t" in str(problem) else ""
        # An unclosed quote or bracket is found only lines later (at the end of the file): say where it was opened
        context, opened = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and opened is not None and (mark is None or opened.line != mark.line):
            what = {"while scanning a quoted scalar": "a quoted value", "while parsing a flow sequence": "a [ list",
                    "while parsing a flow mapping": "a { mapping"}.get(context)
            ends = "never closes" if "end of stream" in str(problem) else "is not closed before this line"
            hint += (f"; {what} opened on line {opened.line + 1} {ends}: close it there" if what
                     else f" ({context} on line {opened.line + 1})")
        raise ConfigError(f"{where}: not valid YAML: {problem}{hint}") from None
    if duplicates:
        raise ConfigError(f"{path}: invalid configuration\n" + "\n".join(f"  {path}:{d}" for d in duplicates))
    if data is None:
        raise ConfigError(f"{path}: the file is empty; a config needs at least `name:` and `data: {{sources: [...]}}`")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (name:, task:, data:, ...)")
    _empty_sections_as_defaults(data, ProjectConfig)
    for override in overrides:
        apply_override(data, override)
    base = path.parent.resolve()
    return parse_config(data, str(path), text, overrides, base).resolve_paths(base)
