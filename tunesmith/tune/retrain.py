"""`tunesmith retrain`: the production version + the corrections users sent -> a candidate version,
judged against production on the same examples, then promoted (or put in an A/B test) only if the
configured rule holds (retrain: in the config; config.RetrainSpec).

    1. corrections  what `tunesmith feedback export` writes, prepared by the same pipeline as any
                    data (cleaning, duplicates, conflicting corrections, quarantine)
    2. dataset      production's dataset + the corrections. The test split stays exactly as it was
                    (frozen): a correction matching one of its examples (exact or near) is kept out
                    and reported. An old training or validation example a correction matches with
                    another label or score leaves its split; in validation the correction takes its
                    place; one matching with the same label is no news and set aside. A share of the
                    rest is held out to judge on; the others train.
    3. training     full: from the base model on the whole new dataset; incremental: from
                    production's weights (or adapter) on the new examples plus a replay sample of
                    old ones, at a gentler learning rate, so the old knowledge is not forgotten
    4. judging      both versions on the frozen test split and on the held-out corrections, with
                    paired tests (McNemar for classes, Wilcoxon on per-example wrong label
                    decisions for label sets, Wilcoxon on absolute errors for scores)
    5. decision     the candidate is registered; it is promoted, or an A/B test started, only if
                    the rule holds; otherwise it stays a candidate and the report says why

Everything lands in one folder beside production's run: corrections/, dataset/, run/, report.*.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash
from pydantic import ValidationError

from tunesmith import __version__
from tunesmith.artifacts import QUARANTINE, DatasetManifest, DatasetVersion, Fingerprint, Run, is_dataset, is_run, write_split
from tunesmith.config import (
    GENERATIVE_TASKS,
    SPLITS,
    ProjectConfig,
    RetrainSpec,
    TaskType,
    format_validation_error,
    parse_config,
)
from tunesmith.errors import ConfigError, NotFound, TunesmithError
from tunesmith.registry.service import ABTestRunning, ProductionChanged, Registry, VersionInfo, missing
from tunesmith.store.db import Store
from tunesmith.tune import trigger

HELD_OUT = "feedback_holdout.parquet"  # corrections kept out of training, to judge candidate vs production on
DROP_TOLERANCE = 1e-9  # float noise in a metric difference; far below one example of any test split

Say = Callable[[str], None]


@dataclass
class Outcome:
    folder: Path
    decision: str  # promoted | ab_test | candidate | not_due
    reasons: list[str]
    candidate: VersionInfo | None = None
    report: dict[str, Any] = field(default_factory=dict)


def retrain(store: Store, model: str, *, mode: str | None = None, promote: str | None = None, out: Path | None = None,
            if_needed: bool = False, settings: dict[str, Any] | None = None, say: Say = print) -> Outcome:
    """One retraining round for registry model `model` (see the module docstring). `settings`: retrain: fields
    that replace production's config's for this round (mode and promote too)."""
    registry = Registry(store)
    production = registry.production(model)
    if production is None and model not in registry.models():
        from tunesmith.registry.service import NotRegistered

        raise NotRegistered(f"'{model}' is not in the registry (`tunesmith registry list` shows what is)")
    if production is None:
        raise ConfigError(f"'{model}' has no production version to retrain from; promote one first "
                          f"(`tunesmith registry promote {model} VERSION`)")
    run = Run(production.run)
    cfg = run.config
    task = cfg.task.type
    if task in GENERATIVE_TASKS:
        raise ConfigError(f"'{model}' is a {task.value} model; retrain handles classification and regression. For chat, "
                          f"export the corrected answers (`tunesmith feedback export --model {model}`) and train on them")
    try:  # the overrides go through the same checks as the config's retrain: section
        spec = RetrainSpec.model_validate({**cfg.retrain.model_dump(), **(settings or {}),
                                           **{k: v for k, v in (("mode", mode), ("promote", promote)) if v is not None}})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "retrain", {})) from None
    status = trigger.check(store, model, production, spec)
    token = None
    if status.in_progress is None and (status.due or not if_needed):
        # Claimed before anything is built, under the model's lock: a cron tick while this round trains stops at
        # check(), one that checked at the same moment stops here, and one after it ended counts from its record
        token, held = trigger.claim(store, production)
        current = registry.production(model) if token is not None and if_needed else None
        if current is not None and current.version == production.version:
            production = current
            status = trigger.check(store, model, production, spec, mine=token)
        elif token is not None and if_needed:  # promoted or rolled back meanwhile: the next tick starts from the new one
            trigger.release(store, production, token)
            return Outcome(Path(production.run), "not_due",
                           [f"production of '{model}' changed from version {production.version} as the round started"],
                           report={"trigger": status.to_dict()})
        elif held is not None:
            status.in_progress, status.reasons = held, []
    try:
        return _checked_round(store, registry, production, run, spec, status, if_needed=if_needed, out=out, say=say)
    finally:
        trigger.release(store, production, token)


def _not_due(status: trigger.TriggerStatus, production: VersionInfo, spec: RetrainSpec, since: str,
             after_round: bool) -> Outcome | None:
    """--if-needed's answer when no round is due (exit 0), with why."""
    if status.in_progress is not None:
        return Outcome(Path(production.run), "not_due",
                       [f"a round from this production (version {production.version}) is in progress "
                        f"{trigger.describe_claim(status.in_progress)}; it trains on these corrections"],
                       report={"trigger": status.to_dict()})
    if not status.due:
        counted = f" since {since}" if after_round else ""
        why = [f"{status.untried} new correction(s){counted} < retrain.min_corrections ({spec.min_corrections})"]
        if after_round and (status.last_result or "").startswith("failed"):  # cron does not retry it on the same ones
            why.append(f"the last round from version {production.version} {status.last_result}")
        if spec.drift_threshold is not None:
            why.append("drift: too few logged requests to measure" if status.drift_psi is None else
                       f"drift PSI {status.drift_psi:.3f} < {spec.drift_threshold:g}")
        return Outcome(Path(production.run), "not_due", why, report={"trigger": status.to_dict()})
    if status.untried == 0:  # due by drift alone: nothing to train on yet, which is no error
        return Outcome(Path(production.run), "not_due",
                       [f"drift PSI {status.drift_psi:.3f} >= {spec.drift_threshold:g}, but no correction arrived since "
                        f"{since}: label some recent traffic (POST /v1/feedback)"],
                       report={"trigger": status.to_dict()})
    return None


def _checked_round(store: Store, registry: Registry, production: VersionInfo, run: Run, spec: RetrainSpec,
                   status: trigger.TriggerStatus, *, if_needed: bool, out: Path | None, say: Say) -> Outcome:
    """The round once due: refused before anything is built where it cannot work, else run (its result, a failure
    included, recorded in production's lineage so --if-needed does not run it again on the same corrections)."""
    model = production.model
    # Counted from the last round run from this production where one ran: cron re-ran it on the same corrections
    after_round = status.untried != status.new_corrections
    since = f"the last round from version {production.version}" if after_round else \
        f"version {production.version} was trained"
    if if_needed and (skipped := _not_due(status, production, spec, since, after_round)) is not None:
        return skipped
    if status.new_corrections == 0:
        raise ConfigError(f"no new feedback for '{model}': no correction arrived since version {production.version} was "
                          "trained (send corrections to POST /v1/feedback with label or value)")
    # Refused before training (after it, the round ended with a registered candidate, no report and an error), and
    # only when due: cron's --if-needed with nothing due exits 0 whatever test runs.
    if spec.promote == "ab_test":
        from tunesmith.monitor.ab import ABService

        running = ABService(store).running(model)
        if running is not None:
            raise ConfigError(f"'{model}' already has a running A/B test ({running.test_id}); stop it (`tunesmith ab stop "
                              f"--model {model}`) or retrain with --promote if_better or never")
    parent_dataset = DatasetVersion(_dataset_of(production, run))
    if parent_dataset.manifest.counts.get("test", 0) == 0:  # the judge: without it, the round crashed after training
        raise ConfigError(f"{parent_dataset.path}: the dataset of '{model}' version {production.version} has no test "
                          "split (0 rows), and a retrained candidate is judged against production on it; prepare the "
                          "data with a test split (data.split.test, or a source with split: test) and put a run "
                          "trained on it in production")

    notes: list[str] = []
    if spec.mode == "incremental":  # an export in production: continue from its run, or refuse before any work
        _, note = _continued_from(run)
        notes += [note] if note else []
    if status.in_progress is not None:
        notes.append(f"another round from this production is in progress {trigger.describe_claim(status.in_progress)}; "
                     "this one (without --if-needed) runs too")
    if out is not None:
        folder = Path(out)
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"{folder} already exists and is not empty; choose another --out")
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = _new_folder(Path(production.run).parent / f"{model}-retrain-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    say(f"retraining '{model}' from production version {production.version} ({spec.mode}); working in {folder}")
    for note in notes:
        say(note)
    _, until = trigger.corrections_since(store, model, 0.0)  # the cutoff first, and the export up to it
    noted: list[str] = []
    try:
        return _round(store, registry, production, run, spec, status, parent_dataset, folder, until, notes, noted, say)
    except TunesmithError as err:
        # The same corrections fail the same way (a class training refuses, no usable correction): recorded, so
        # --if-needed waits for new ones instead of failing at every cron tick. A crash or Ctrl-C is not: it may pass.
        if not noted:
            _note_round(registry, production, until, folder, f"failed: {type(err).__name__}: {str(err)[:500]}")
        raise


def _round(store: Store, registry: Registry, production: VersionInfo, run: Run, spec: RetrainSpec,
           status: trigger.TriggerStatus, parent_dataset: DatasetVersion, folder: Path, until: float | None,
           notes: list[str], noted: list[str], say: Say) -> Outcome:
    """Steps 1 to 5 (the module docstring); `noted`: what was recorded in production's lineage, once it was."""
    model, cfg = production.model, run.config
    corrections, corrections_version = _prepared_corrections(store, model, cfg, parent_dataset, folder, until, say)
    built = _build_dataset(cfg, spec, parent_dataset, corrections_version, folder / "dataset")
    say(f"dataset {built.path}: {built.summary()}")
    if built.details["corrections_in_train"] == 0:  # incremental failed on an empty class list, full trained on nothing new
        d = built.details
        _note_round(registry, production, corrections["until"], folder, "nothing new to train on")
        noted.append("nothing new to train on")
        raise ConfigError(f"nothing new to train on for '{model}': of {corrections['usable']} usable correction(s), "
                          f"{len(d['kept_out'])} repeat a frozen test example, {d['corrections_known']} say what "
                          f"training already says, {d['corrections_in_validation']} replaced validation examples and "
                          f"{d['counts']['feedback_holdout']} are held out to judge on (see {built.path}); send more "
                          "corrections, or lower retrain.feedback_holdout")
    train_dir = built.path
    if spec.mode == "incremental":
        train_dir = _replay_dataset(built, parent_dataset, spec, cfg.data.split.seed, folder / "dataset-incremental",
                                    cfg.task.type)
    candidate_cfg = _candidate_config(run, spec, folder / "run")

    from tunesmith.training import train

    say(f"training the candidate ({spec.mode}) on {train_dir}")
    run_dir = train(candidate_cfg, dataset_dir=train_dir)
    _mark_round(Path(run_dir), spec, run, folder)

    judged = judge(Run(production.run), Run(run_dir), built, spec)
    passes, reasons = decide(judged, spec)
    lineage = {"parent_version": production.version, "dataset": str(built.path.resolve()),
               "retrain": {"mode": spec.mode, "feedback_until": corrections["until"], "corrections": corrections["count"],
                           "folder": str(folder.resolve()), "passed": passes}}
    candidate = registry.add(run_dir, model, lineage=lineage)
    decision = "candidate"
    _note_round(registry, production, corrections["until"], folder, f"version {candidate.version} registered")
    noted.append("registered")
    current = registry.production(model)
    if passes and spec.promote != "never" and (current is None or current.version != production.version):
        # judged against a version no longer in production: whichever replaced it was never compared with it
        reasons.append(f"production changed to version {current.version if current else None} while the candidate "
                       f"trained; it was judged against version {production.version}, so it stays a candidate")
    elif passes and spec.promote == "if_better":
        try:
            candidate = registry.promote(model, candidate.version, replacing=production.version)
            decision = "promoted"
        except ProductionChanged as err:
            reasons.append(str(err))
        except ABTestRunning as err:  # started while it trained: the round stands, the candidate registered
            reasons.append(f"not promoted, so it stays a candidate: {err}")
    elif passes and spec.promote == "ab_test":
        from tunesmith.monitor.ab import ABService

        try:  # checked before training, but a test can start meanwhile (another round, an operator)
            ABService(store).start(model, {f"v{production.version}": 0.5, f"v{candidate.version}": 0.5},
                                   alpha=spec.alpha)
            decision = "ab_test"
        except ConfigError as err:
            reasons.append(f"no A/B test started, so it stays a candidate: {err}")
    elif passes:
        reasons.append("retrain.promote is 'never': promote it yourself with `tunesmith registry promote`")
    report = {"model": model, "production": production.version, "candidate": candidate.version, "mode": spec.mode,
              "decision": decision, "passed": passes, "reasons": reasons, "trigger": status.to_dict(),
              "corrections": corrections, "dataset": built.details, "judged": judged,
              "rule": {"max_test_drop": spec.max_test_drop, "require_feedback_gain": spec.require_feedback_gain,
                       "alpha": spec.alpha, "promote": spec.promote},
              "run": str(Path(run_dir).resolve()), "notes": notes, "created_at": int(time.time())}
    _write_report(folder, report)
    return Outcome(folder, decision, reasons, candidate, report)


def _new_folder(stem: Path) -> Path:
    """A folder of this round's own: two rounds started in the same second (two workers) shared one and wrote over
    each other's files. Made exclusively, `-2`, `-3`... when the name is taken."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = stem if n == 1 else stem.with_name(f"{stem.name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise ConfigError(f"{stem}: 999 retrain folders of that name already exist; pass --out")


def _note_round(registry: Registry, production: VersionInfo, until: float | None, folder: Path, result: str) -> None:
    """Production's lineage keeps the cutoff of this round, so `--if-needed` counts from it: without it each cron
    tick ran the same round on the same corrections again (an identical candidate, or the same error)."""
    if until is None:
        return
    record = trigger.round_record(production, until, folder=str(folder.resolve()), result=result, at=int(time.time()))
    try:
        registry.note(production.model, production.version, trigger.LAST_ROUND, record)
    except NotFound:  # the version was deleted meanwhile: nothing to keep it in
        pass


def _dataset_of(production: VersionInfo, run: Run) -> Path:
    """The dataset production was trained on in full (an incremental run trained on a replay subset)."""
    path = Path(production.lineage.get("dataset") or run.manifest.dataset)
    if not is_dataset(path):
        raise ConfigError(f"the dataset of '{production.model}' version {production.version} is gone from {path}; "
                          "retraining adds the corrections to it, so it has to be there (prepare it again and "
                          "register a run trained on it)")
    return path


# -- 1. corrections -------------------------------------------------------------------------------


def _prepared_corrections(store: Store, model: str, cfg: ProjectConfig, parent: DatasetVersion, folder: Path,
                          until: float | None, say: Say) -> tuple[dict[str, Any], DatasetVersion]:
    from tunesmith.data.prepare import prepare
    from tunesmith.monitor.feedback import FeedbackService

    raw = folder / "corrections.csv"
    # `until`, the cutoff, was read first, and the export goes up to it: a correction arriving in between was marked
    # trained on, unused.
    written = FeedbackService(store).export(model, raw, until=until, separator=cfg.task.label_separator)
    if written == 0:
        raise ConfigError(f"no usable corrections for '{model}': the feedback has no corrected label or value paired "
                          "with a logged input")
    replaced = _latest_per_text(raw, cfg)
    target = "score" if cfg.task.type == TaskType.regression else "label"
    data = cfg.model_dump(mode="json")
    data["data"].update(sources=[{"path": str(raw), "kind": "csv",
                                  "fields": {"text": "text", target: target, "id": "id"}}],
                        output_dir=str(folder / "corrections"), strict=False, annotate={})
    # Their own split is thrown away (_build_dataset pools them), so a leak across it is none: with leakage "fail" two
    # near-copy corrections aborted the round, with "remove" one was quarantined
    data["data"]["split"].update(group_by=None, leakage="report")
    data["task"].update(labels=parent.manifest.labels)  # the model's label set; its separator, as exported
    version = prepare(parse_config(data, f"corrections of '{model}'"), folder / "corrections")
    counts = version.manifest.counts
    usable = sum(counts[s] for s in SPLITS)
    newer = f", {replaced} replaced by a newer correction of the same text" if replaced else ""
    say(f"corrections: {written} exported{newer}, {usable} usable after cleaning and deduplication "
        f"({counts['quarantine']} in {version.path / QUARANTINE})")
    return {"count": written, "replaced_by_newer": replaced, "usable": usable, "quarantined": counts["quarantine"],
            "until": until, "file": str(raw)}, version


def _latest_per_text(raw: Path, cfg: ProjectConfig) -> int:
    """Keep only each text's latest correction in the export (its rows come oldest first). Every correction ever given
    is exported, so a text an earlier round trained on as "pos" and corrected "neg" since came twice: a conflicting
    duplicate, which preparation's `majority` dropped (a tie) and `first` settled for the older word, in this round and
    every later one. The user's label is the newer word. "The same text" as preparation's duplicates: cleaned, then
    its dedup key. Returns how many older rows were left out."""
    import csv

    from tunesmith.data.clean import dedup_key
    from tunesmith.tasks.text import TextCleaner

    clean = TextCleaner(cfg.data.clean)
    with raw.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    text = header.index("text")
    latest = {dedup_key(clean(row[text])): i for i, row in enumerate(rows)}  # the last row of a key wins
    if len(latest) == len(rows):
        return 0
    keep = sorted(latest.values())
    with raw.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *(rows[i] for i in keep)])
    return len(rows) - len(keep)


# -- 2. the new dataset version --------------------------------------------------------------------


def _keys(texts: list[str]) -> np.ndarray:
    from tunesmith.data.clean import dedup_key

    return np.array([xxhash.xxh3_64_intdigest(dedup_key(t).encode("utf-8", "surrogatepass")) for t in texts], dtype=np.uint64)


def _matches(queries: list[str], pool: list[str], cfg: ProjectConfig, near: bool | None = None) -> dict[int, tuple[int, str]]:
    """query index -> (pool index, how) for queries that repeat a pool text: exactly, or nearly when `near` (by default
    the config's near-duplicate check) is on (the same MinHash test as preparation)."""
    found: dict[int, tuple[int, str]] = {}
    if not queries or not pool:
        return found
    where = {int(k): j for j, k in enumerate(_keys(pool))}
    for i, k in enumerate(_keys(queries)):
        if int(k) in where:
            found[i] = (where[int(k)], "exact")
    spec = cfg.data.dedup
    if spec.near if near is None else near:
        from tunesmith.data import dedup

        texts = queries + pool
        sigs = dedup.minhash_signatures(texts, len(texts), spec.num_perm, spec.shingle_size, seed=cfg.data.split.seed)
        i, j, sims = dedup.similar_pairs(sigs, spec.near_threshold)
        n = len(queries)
        for a, b, sim in zip(i, j, sims, strict=True):
            if a < n <= b and int(a) not in found:
                found[int(a)] = (int(b) - n, f"near (similarity {sim:.2f})")
    return found


@dataclass
class BuiltDataset:
    path: Path
    details: dict[str, Any]

    def summary(self) -> str:
        d = self.details
        return (f"{d['counts']['train']} training examples ({d['corrections_in_train']} from corrections, "
                f"{len(d['superseded'])} old examples corrected), {d['counts']['feedback_holdout']} corrections held out, "
                f"{len(d['kept_out'])} kept out (they repeat a frozen test example), {d['corrections_known']} "
                "already known")


def _build_dataset(cfg: ProjectConfig, spec: RetrainSpec, parent: DatasetVersion, corrections: DatasetVersion,
                   out: Path) -> BuiltDataset:
    from tunesmith.data import report
    from tunesmith.data.prepare import Quarantine
    from tunesmith.data.records import TARGET_TYPES, Rejection, with_provenance_columns

    old = {s: with_provenance_columns(parent.table(s)) for s in SPLITS}  # a dataset prepared before provenance was kept
    new = pa.concat_tables([corrections.table(s) for s in SPLITS])  # one pool: their own split means nothing here
    texts = new.column("text").to_pylist()
    ids = new.column("id").to_pylist()
    out.mkdir(parents=True, exist_ok=True)
    quarantine = Quarantine(out / QUARANTINE)
    for entry in parent.quarantine() + corrections.quarantine():  # nothing quarantined before is lost
        quarantine.add(Rejection(**{k: entry.get(k) for k in ("stage", "source", "line", "reason", "field", "id", "kind", "record")}))

    kept_out: list[dict[str, Any]] = []
    usable = np.ones(len(texts), dtype=bool)
    test_texts, test_ids = old["test"].column("text").to_pylist(), old["test"].column("id").to_pylist()
    # Near copies too, whatever data.dedup.near says: preparation's leakage check always removes them across splits.
    # Such a correction still takes out the example it corrects (below): the user says that label is wrong, and the
    # wrong example had stayed in training beside its frozen twin.
    near_test: set[int] = set()
    for i, (j, how) in sorted(_matches(texts, test_texts, cfg, near=True).items()):
        near_test.add(i)
        kept_out.append({"id": ids[i], "text": texts[i][:300], "split": "test", "matches": test_ids[j], "match": how})
        quarantine.add(Rejection(stage="frozen_split", source="feedback", line=0, id=ids[i], kind="removed",
                                 reason=f"{how} duplicate of '{test_ids[j]}' in the frozen test split: kept out of "
                                        "training so the test split stays a fair judge", record={"text": texts[i]}))

    # A correction that repeats a training or validation example replaces it (the user's label is the newer word):
    # in validation it takes the old one's place; in training it trains or is held out to judge on, like the others
    # (a text production learnt wrong is a fair question). Validation first, so it never also lands in training.
    # One that says what the example already says (a correction an earlier round trained on, exported again) is
    # no news: the example stays and the correction is set aside, never held out to judge a model that learnt it.
    target = TARGET_TYPES[cfg.task.type][0]  # the canonical column holding the label(s) or score
    new_targets = new.column(target).to_pylist()
    superseded: list[dict[str, Any]] = []
    known: list[int] = []
    keep = {split: np.ones(old[split].num_rows, dtype=bool) for split in ("train", "validation")}
    placed: dict[str, list[int]] = {"train": [], "validation": []}
    for split in ("validation", "train"):
        pool, pool_ids = old[split].column("text").to_pylist(), old[split].column("id").to_pylist()
        old_targets = old[split].column(target).to_pylist()
        live = [i for i in range(len(texts)) if usable[i]]
        for k, (j, how) in sorted(_matches([texts[i] for i in live], pool, cfg).items()):
            if not keep[split][j]:
                continue
            i = live[k]
            if i in near_test:  # kept out: the example it corrects goes, the correction does not come in
                if not _same(old_targets[j], new_targets[i]):
                    keep[split][j] = False
                    usable[i] = False
                    superseded.append({"split": split, "id": pool_ids[j], "by": ids[i], "match": how,
                                       "old": old_targets[j], "new": new_targets[i], "kept_out": True})
                    quarantine.add(Rejection(stage="superseded", source=str(parent.path / f"{split}.parquet"), line=0,
                                             id=pool_ids[j], kind="removed", record={"text": pool[j]},
                                             reason=f"corrected by '{ids[i]}' ({how} match): {old_targets[j]!r} -> "
                                                    f"{new_targets[i]!r}, a correction kept out (it repeats a frozen "
                                                    "test example), so the example is removed, not replaced"))
                continue
            if _same(old_targets[j], new_targets[i]):
                usable[i] = False
                known.append(i)
                quarantine.add(Rejection(stage="already_known", source="feedback", line=0, id=ids[i], kind="removed",
                                         reason=f"{how} match of '{pool_ids[j]}' in {split}, with the same "
                                                f"{target} {new_targets[i]!r}: nothing new", record={"text": texts[i]}))
                continue
            keep[split][j] = False
            if split == "validation":
                usable[i] = False
                placed["validation"].append(i)
            superseded.append({"split": split, "id": pool_ids[j], "by": ids[i], "match": how, "old": old_targets[j],
                               "new": new_targets[i]})
            quarantine.add(Rejection(stage="superseded", source=str(parent.path / f"{split}.parquet"), line=0,
                                     id=pool_ids[j], kind="removed", record={"text": pool[j]},
                                     reason=f"replaced by the correction '{ids[i]}' ({how} match): "
                                            f"{old_targets[j]!r} -> {new_targets[i]!r}"))
    usable[list(near_test)] = False
    live = [i for i in range(len(texts)) if usable[i]]

    held = _holdout(live, [new_targets[i] for i in live], spec.feedback_holdout, cfg.data.split.seed, cfg.task.type)
    # A held-out correction near a training one (the same review sent twice with a typo) would judge the candidate on
    # what it trained on: it trains too, whatever data.dedup.near says (as preparation's leakage check does)
    held_rows = sorted(held)
    trains = [i for i in live if i not in held]
    held -= {held_rows[k] for k in _matches([texts[i] for i in held_rows], [texts[i] for i in trains], cfg, near=True)}
    to_train = [i for i in live if i not in held]
    by_id = {ids[i]: i for i in held}
    for entry in superseded:  # where the correction went: "replaced" is true only where it trains
        entry["correction"] = "kept out" if entry.pop("kept_out", False) else \
            "validation" if entry["split"] == "validation" else "held out" if entry["by"] in by_id else "train"
    schema = old["train"].schema
    take = lambda rows: new.take(pa.array(rows, type=pa.int64())).select(schema.names).cast(schema)  # noqa: E731
    tables = {"train": pa.concat_tables([old["train"].filter(pa.array(keep["train"])), take(to_train)]),
              "validation": pa.concat_tables([old["validation"].filter(pa.array(keep["validation"])),
                                              take(placed["validation"])]),
              "test": old["test"]}
    fingerprint = Fingerprint()
    for name in SPLITS:
        write_split(out, name, tables[name])
        fingerprint.add_split(name, tables[name])
    holdout = take(sorted(held))
    write_split(out, HELD_OUT.removesuffix(".parquet"), holdout)
    quarantine.close()

    counts = {s: tables[s].num_rows for s in SPLITS}
    # An earlier round's held-out corrections are in no split of the parent: they come back through the export
    # (the same answers, corrected), so the parent's input counts without them (a second round failed on this).
    inherited = parent.manifest.counts["input"] - parent.manifest.counts.get("feedback_holdout", 0)
    counts.update(feedback_holdout=holdout.num_rows, quarantine=quarantine.count,
                  input=inherited + corrections.manifest.counts["input"])
    accounted = sum(counts[s] for s in SPLITS) + counts["feedback_holdout"] + counts["quarantine"]
    if accounted != counts["input"]:  # the preparation pipeline's core promise, kept here too
        raise AssertionError(f"row accounting is off: {counts}")
    pm = parent.manifest
    manifest = DatasetManifest(
        name=pm.name, task=pm.task, description=pm.description, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        tunesmith_version=__version__, fingerprint=fingerprint.hexdigest(), counts=counts, labels=pm.labels,
        tokenizer=pm.tokenizer, context_length=pm.context_length, max_length=pm.max_length, config=pm.config)
    (out / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    details = {"parent": str(parent.path.resolve()), "parent_fingerprint": pm.fingerprint, "fingerprint": manifest.fingerprint,
               "counts": counts, "corrections_in_train": len(to_train), "corrections_in_validation": len(placed["validation"]),
               "corrections_known": len(known), "kept_out": kept_out, "superseded": superseded}
    summary = report.PreparationSummary(
        task=cfg.task.type,
        sources=[{"source": str(parent.path), "kind": "dataset", "split": "as prepared", "rows": pm.counts["input"],
                  "rejected": pm.counts.get("quarantine", 0)},
                 {"source": str(corrections.path), "kind": "feedback corrections", "split": "train",
                  "rows": corrections.manifest.counts["input"], "rejected": corrections.manifest.counts["quarantine"]}],
        steps=[{"step": "corrections kept out of the frozen test split", "rows_in": len(texts),
                "rows_out": len(texts) - len(kept_out), "removed": len(kept_out),
                "reasons": {"repeats a test example": len(kept_out)}},
               {"step": "old examples corrected (replaced, or left for a held-out correction)", "rows_in": old["train"].num_rows + old["validation"].num_rows,
                "rows_out": int(keep["train"].sum() + keep["validation"].sum()), "removed": len(superseded),
                "reasons": {f"superseded in {s}": sum(x["split"] == s for x in superseded) for s in ("train", "validation")}},
               {"step": "corrections held out to judge on", "rows_in": len(live), "rows_out": len(to_train),
                "removed": len(held), "reasons": {"feedback holdout": len(held)}}],
        missing_values={}, removed_by_stage={"frozen_split": len(kept_out), "superseded": len(superseded)},
        near_threshold=cfg.data.dedup.near_threshold, near_examples=[], conflict_policy=cfg.data.dedup.conflicts,
        conflicts=[], leakage_checked=["exact", "near" if cfg.data.dedup.near else "exact only"],
        leakage_policy="corrections matching validation/test are kept out", leaks=[], label_map_changes={},
        corrections_applied=len(to_train), corrections_unused=[], quarantine_rows=quarantine.count,
        quarantine_by_stage=dict(quarantine.by_stage), quarantine_examples=dict(quarantine.examples),
        warnings=[f"{len(kept_out)} correction(s) repeat a frozen test example and were kept out of training"]
        if kept_out else [], seconds=0.0)
    report.write(out, manifest, summary, tables)
    (out / "retrain.json").write_text(json.dumps(details, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return BuiltDataset(out, details)


def _same(old: Any, new: Any) -> bool:
    """Does a correction say what the example says: the same label (set), or the same score?"""
    if isinstance(old, list) and isinstance(new, list):
        return sorted(old) == sorted(new)
    if isinstance(old, float) and isinstance(new, float):
        return bool(np.isclose(old, new))
    return old == new


def _holdout(rows: list[int], targets: list[Any], share: float, seed: int, task: TaskType) -> set[int]:
    """The corrections kept out of training, stratified by class where every class has two or more."""
    n = round(len(rows) * share)
    if n < 1 or len(rows) - n < 1:
        return set()
    from collections import Counter

    from sklearn.model_selection import train_test_split

    strata = [",".join(t) if isinstance(t, list) else t for t in targets] if task != TaskType.regression else None
    if strata is not None and (min(Counter(strata).values()) < 2 or n < len(set(strata))):
        strata = None
    _, held = train_test_split(rows, test_size=n, random_state=seed, stratify=strata)
    return set(held)


def _replay_dataset(built: BuiltDataset, parent: DatasetVersion, spec: RetrainSpec, seed: int, out: Path,
                    task: TaskType | None = None) -> Path:
    """Incremental training's data: the new examples plus `replay` old ones per new one (the rest of the
    folder is the full dataset's: validation and test are the same frozen splits). Every class (label) of the full
    training split is in it at least once: a plain sample missed a rare one, and training refused the round (validation
    has a class training never has)."""
    from tunesmith.data.records import TARGET_TYPES

    full = DatasetVersion(built.path)
    train = full.table("train")
    n_old = train.num_rows - built.details["corrections_in_train"]
    new_rows = np.arange(n_old, train.num_rows)
    rng = np.random.default_rng(seed)
    task = task or TaskType(full.manifest.task)
    must = np.array([], dtype=np.int64)
    if task != TaskType.regression:
        targets = train.column(TARGET_TYPES[task][0]).to_pylist()
        must = _covering(targets[:n_old], targets[n_old:], rng)
    rest = np.setdiff1d(np.arange(n_old), must)
    size = min(len(rest), max(0, round(spec.replay * len(new_rows)) - len(must)))
    replay = np.concatenate([must, rng.choice(rest, size=size, replace=False)]).astype(np.int64)
    subset = train.take(pa.array(np.sort(np.concatenate([replay, new_rows])), type=pa.int64()))
    shutil.copytree(built.path, out)
    write_split(out, "train", subset)
    fingerprint = Fingerprint()
    for name in SPLITS:
        fingerprint.add_split(name, subset if name == "train" else full.table(name))
    manifest = full.manifest.model_copy(update={"fingerprint": fingerprint.hexdigest(),
                                                "counts": {**full.manifest.counts, "train": subset.num_rows}})
    (out / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return out


def _covering(old: list[Any], new: list[Any], rng: np.random.Generator) -> np.ndarray:
    """Old rows (one per class, or per label of label sets, chosen at random) that put every class of the training
    split the new rows lack into the replay sample."""
    sets = [set(t) if isinstance(t, list) else {t} for t in old]
    covered = set().union(*(set(t) if isinstance(t, list) else {t} for t in new))
    chosen: list[int] = []
    for label in sorted(set().union(*sets) - covered, key=str):
        if label in covered:  # an earlier pick of a label set brought it
            continue
        row = int(rng.choice([i for i, t in enumerate(sets) if label in t]))
        chosen.append(row)
        covered |= sets[row]
    return np.array(chosen, dtype=np.int64)


# -- 3. the candidate's config --------------------------------------------------------------------


ROUND_MARK = "retrain_round.json"  # in a run folder: made by a retrain round, in this mode, from this parent


def _mark_round(run_dir: Path, spec: RetrainSpec, parent: Run, folder: Path) -> None:
    (run_dir / ROUND_MARK).write_text(json.dumps({"mode": spec.mode, "parent_run": str(parent.path.resolve()),
                                                  "folder": str(folder.resolve())}, indent=2) + "\n", encoding="utf-8")


def _incremental_round(run: Run) -> bool:
    """Did an incremental retrain round make this run? Runs of rounds from before the mark: a continued run trained
    on a round's dataset (its retrain.json, which the replay subset's folder copies)."""
    mark = run.path / ROUND_MARK
    if mark.exists():
        try:
            return json.loads(mark.read_text(encoding="utf-8")).get("mode") == "incremental"
        except (OSError, ValueError, AttributeError):
            return False
    return bool(run.manifest.parent_run) and (Path(run.manifest.dataset) / "retrain.json").is_file()


def _recipe(run: Run) -> Run:
    """The run that holds the training recipe: production itself, or, when production came from incremental
    rounds, the run they started from (their settings are the rounds' gentler ones, not the recipe's). Only the
    rounds' runs are walked past: a run the user trained with train.init_from is a recipe of its own (its parent's
    learning rate, steps or method are not what it was trained with)."""
    seen = {run.path.resolve()}
    while (_incremental_round(run) and run.manifest.parent_run and is_run(run.manifest.parent_run)
           and Path(run.manifest.parent_run).resolve() not in seen):
        run = Run(run.manifest.parent_run)
        seen.add(run.path.resolve())
    return run


def _continued_from(run: Run) -> tuple[Run, str | None]:
    """The run an incremental round continues: production's, or, when production is an export folder (export.json),
    the run it was exported from (an ONNX export has no trainable weights: the round crashed on reading them; a merged
    export of an adapter run has no adapter: the round trained every weight while saying lora, and wrote a run that
    did not load). (run, a note for the report when it is not production's own folder.) A ConfigError when there is
    nothing to continue."""
    from tunesmith.export.folder import EXPORT_MANIFEST

    info_path = run.path / EXPORT_MANIFEST
    if not info_path.is_file():
        return run, None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    info = info if isinstance(info, dict) else {}
    fmt, source = str(info.get("format") or "unknown"), info.get("source_run")
    if source and missing(source) is None and not (Path(source) / EXPORT_MANIFEST).exists():
        return Run(source), (f"production ({run.path}) is a {fmt} export; the candidate continues from the run it was "
                             f"exported from, {source}")
    m = run.manifest
    if not fmt.startswith("onnx") and m.method in ("full", "head") and not m.adapter:
        return run, None  # a merged export of full weights: they train on as they are
    why = ("an ONNX export has no trainable weights" if fmt.startswith("onnx") else
           f"a merged export of a {m.method} run has no adapter to continue (its adapter is merged into the weights)")
    gone = f"the run it was exported from, {source}, is gone or not a loadable run" if source else \
        "it names no run it was exported from"
    raise ConfigError(f"{info_path}: production of this model is a {fmt} export, and an incremental round continues "
                      f"from production's weights: {why}, and {gone}. Retrain with --mode full (`--set "
                      "retrain.mode=full`: trains from the base model), or register the source run (`tunesmith registry "
                      "add RUN --model NAME`) and promote it")


def _candidate_config(run: Run, spec: RetrainSpec, run_dir: Path) -> ProjectConfig:
    """Full: the recipe's config as it was. Incremental: production's weights (an export's: its run's), the recipe's
    learning rates scaled down, incremental_epochs passes."""
    start = _continued_from(run)[0] if spec.mode == "incremental" else run
    recipe = _recipe(start)
    cfg = recipe.config
    data = cfg.model_dump(mode="json")
    data["train"].update(output_dir=str(run_dir), init_from=None)
    data.pop("tune", None)  # a candidate is trained, never tuned; an older run's tune section may no longer parse
    if spec.mode == "incremental":
        lr = float(recipe.manifest.hyperparameters.get("learning_rate") or cfg.train.lr(cfg.task.type))
        head_lr = cfg.train.head_learning_rate  # the head is trained already: gentler too, as the body
        data["train"].update(init_from=str(start.path.resolve()), epochs=spec.incremental_epochs, max_steps=None,
                             hyperparameters=None, learning_rate=lr * spec.incremental_lr_scale,
                             head_learning_rate=head_lr * spec.incremental_lr_scale if head_lr else None)
    return parse_config(data, f"{recipe.path}/config.json (retrain)")


# -- 4 and 5. judging and deciding ----------------------------------------------------------------


def judge(production: Run, candidate: Run, dataset: BuiltDataset, spec: RetrainSpec) -> dict[str, Any]:
    """Both versions on the frozen test split and on the held-out corrections: metrics and a paired test each."""
    import pyarrow.parquet as pq

    from tunesmith.data.records import TARGET_TYPES
    from tunesmith.evaluation.sequence import score
    from tunesmith.inference.predictor import Predictor
    from tunesmith.tasks.sequence import targets

    task = TaskType(production.manifest.task)
    labels = production.manifest.labels or []
    sets = {"test": DatasetVersion(dataset.path).table("test"), "feedback": pq.read_table(dataset.path / HELD_OUT)}
    predictors = {"production": Predictor(production.path), "candidate": Predictor(candidate.path)}
    out: dict[str, Any] = {}
    for name, table in sets.items():
        if table.num_rows == 0:
            out[name] = {"n": 0}
            continue
        texts = table.column("text").to_pylist()
        y_true = targets(task, table, len(labels))
        preds = {side: p.predict(texts, cleaned=True) for side, p in predictors.items()}
        metrics = {side: _plain(score(task, y_true, pr.outputs, labels, pr.proba)) for side, pr in preds.items()}
        paired = _paired(task, table.column(TARGET_TYPES[task][0]).to_pylist(), preds["production"].labels,
                         preds["candidate"].labels, labels)
        out[name] = {"n": table.num_rows, "metrics": metrics, "paired": paired}
    return out


def _paired(task: TaskType, truth: list[Any], production: list[Any], candidate: list[Any], labels: list[str]) -> dict[str, Any]:
    """The paired test for the task. Multi-label is judged on each label decision: on exact label sets a candidate
    that answers more labels wrong on the examples production already missed looked just as good."""
    from tunesmith.evaluation.paired import mcnemar, wilcoxon_errors, wilcoxon_hamming

    if task == TaskType.regression:
        return wilcoxon_errors(truth, production, candidate).to_dict()
    if task == TaskType.multi_label:
        return wilcoxon_hamming(truth, production, candidate, len(labels)).to_dict()
    return mcnemar(truth, production, candidate).to_dict()


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers (no matrices or per-class tables) for the report."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def decide(judged: dict[str, Any], spec: RetrainSpec) -> tuple[bool, list[str]]:
    """The promotion rule: not worse on the frozen test split (within max_test_drop, and not
    significantly), and, when required, significantly better on the held-out corrections."""
    reasons: list[str] = []
    passes = True
    test = judged["test"]["paired"]
    if test["metric"] == "mae":  # a relative tolerance: MAE is in the user's units
        drop = (test["candidate"] - test["reference"]) / max(test["reference"], 1e-12)
        shown = f"MAE {test['reference']:.4g} -> {test['candidate']:.4g} ({drop:+.1%})"
    else:
        drop = test["reference"] - test["candidate"]
        shown = f"{_measure(test)} {test['reference']:.4f} -> {test['candidate']:.4f}"
    if drop > spec.max_test_drop + DROP_TOLERANCE:  # 0.86 - 0.85 is 0.010000000000000009: refused "more than 0.01"
        passes = False
        reasons.append(f"worse on the test split: {shown}, more than retrain.max_test_drop ({spec.max_test_drop:g})")
    elif test["p_worse"] < spec.alpha:
        passes = False
        reasons.append(f"significantly worse on the test split: {shown}, {test['test']} p = {test['p_worse']:.3g}")
    else:
        reasons.append(f"not worse on the test split: {shown} ({test['test']} p(worse) = {test['p_worse']:.3g})")
    feedback = judged["feedback"]
    if feedback["n"] == 0:
        if spec.require_feedback_gain:
            passes = False
            reasons.append("no held-out corrections to judge the gain on (retrain.feedback_holdout is 0 or there were "
                           "too few corrections); collect more, or set retrain.require_feedback_gain: false")
    else:
        fb = feedback["paired"]
        better = fb["difference"] > 0 and fb["p_better"] < spec.alpha
        shown = f"{_measure(fb)} {fb['reference']:.4g} -> {fb['candidate']:.4g} on {feedback['n']} held-out correction(s), " \
                f"{fb['test']} p(better) = {fb['p_better']:.3g}"
        if better:
            reasons.append(f"significantly better on the corrections: {shown}")
        elif spec.require_feedback_gain:
            passes = False
            reasons.append(f"not significantly better on the corrections: {shown} (alpha {spec.alpha:g})")
        else:
            reasons.append(f"on the corrections: {shown} (no gain required)")
    return passes, reasons


def _measure(paired: dict[str, Any]) -> str:
    """What a paired test's reference and candidate numbers are, in the reasons' words."""
    return {"mae": "MAE", "label_accuracy": "label accuracy (Hamming)"}.get(paired["metric"], "accuracy")


def _write_report(folder: Path, report: dict[str, Any]) -> None:
    from tunesmith.html_report import markdown_to_html

    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    md = _markdown(report)
    (folder / "report.md").write_text(md, encoding="utf-8")
    (folder / "report.html").write_text(markdown_to_html(md, folder, f"Retrain report: {report['model']}"), encoding="utf-8")


def _markdown(r: dict[str, Any]) -> str:
    from tunesmith.html_report import markdown_text as esc

    verdict = {"promoted": f"promoted: version {r['candidate']} is now in production",
               "ab_test": f"an A/B test started: v{r['production']} vs v{r['candidate']} (`tunesmith ab status --model {r['model']}`)",
               "candidate": f"version {r['candidate']} stays a candidate"}[r["decision"]]
    lines = [f"# Retraining '{esc(r['model'])}': {verdict}", "",
             f"Production version {r['production']} + {r['corrections']['usable']} usable correction(s), mode **{r['mode']}**; "
             f"candidate run `{r['run']}`.", "", "## Decision", ""]
    lines += [f"- {x}" for x in r["reasons"]]
    lines += [f"- note: {esc(x)}" for x in r.get("notes", [])]  # paths: escaped (a report from before notes has none)
    rule = r["rule"]
    lines += ["", f"Rule: the test metric may drop by at most {rule['max_test_drop']:g} and not significantly; "
              + ("significantly better on the held-out corrections; " if rule["require_feedback_gain"] else "")
              + f"alpha {rule['alpha']:g}; then: {rule['promote']}.", ""]
    for name, title in (("test", "Frozen test split"), ("feedback", "Held-out corrections")):
        j = r["judged"][name]
        lines += [f"## {title} ({j['n']} examples)", ""]
        if not j["n"]:
            lines += ["(none)", ""]
            continue
        prod, cand = j["metrics"]["production"], j["metrics"]["candidate"]
        keys = [k for k in {**prod, **cand} if k != "n"]  # a metric one side lacks (constant predictions: no pearson)
        lines += ["| metric | production | candidate |", "|---|---|---|"]
        lines += [f"| {k} | {_cell(prod.get(k))} | {_cell(cand.get(k))} |" for k in keys]
        p = j["paired"]
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in p["detail"].items())
        lines += ["", f"{p['test']}: p = {p['p_value']:.3g} (candidate better: p = {p['p_better']:.3g}; worse: "
                      f"p = {p['p_worse']:.3g}); {counts}.", ""]
    d = r["dataset"]
    lines += ["## Data", "", f"- new dataset: {d['counts']['train']} train / {d['counts']['validation']} validation / "
              f"{d['counts']['test']} test (test unchanged), {d['counts']['feedback_holdout']} corrections held out",
              f"- corrections in training: {d['corrections_in_train']}, in validation: {d['corrections_in_validation']}; "
              f"old examples they corrected: {len(d['superseded'])} (the correction trains: "
              f"{sum(x.get('correction') == 'train' for x in d['superseded'])}, held out: "
              f"{sum(x.get('correction') == 'held out' for x in d['superseded'])}, kept out, so only removed: "
              f"{sum(x.get('correction') == 'kept out' for x in d['superseded'])}); already known (same label, "
              f"set aside): {d.get('corrections_known', 0)}",
              f"- kept out because they repeat a frozen test example: {len(d['kept_out'])}"]
    # ids (file:line) and texts come from users: escaped, never in backticks, which no escape can close safely
    lines += [f"  - {esc(k['id'])} repeats {esc(k['matches'])} ({esc(k['split'])}, {esc(k['match'])}): {esc(k['text'][:120])}"
              for k in d["kept_out"][:20]]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    """A metric in the report's table; one that side has no value for (missing, None) is a dash."""
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "—"
