"""Registry operations over the store: register, list, promote, roll back. Values or ApiError-free
exceptions: every refusal is a ConfigError naming the model and version (the CLI and the admin API
turn it into exit code 2 / HTTP 400)."""

from __future__ import annotations

import secrets
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunesmith.artifacts import MODEL_DIR, RUN_MANIFEST, Run, is_run
from tunesmith.errors import ConfigError, NotFound
from tunesmith.store.db import Store
from tunesmith.store.schema import ABTest, ModelVersion, RegisteredModel, RegistryEvent

Stage = Literal["candidate", "production", "archived"]
STAGES: tuple[Stage, ...] = ("candidate", "production", "archived")


class NotRegistered(NotFound):
    """The model or version named is not in the registry (HTTP 404 in the admin API)."""


class ProductionChanged(ConfigError):
    """Another promotion or rollback happened since a candidate was judged against the production it would replace."""


class ABTestRunning(ConfigError):
    """A production change while an A/B test runs on the model: serving follows the test, so it would get no traffic."""


class VersionInfo(BaseModel):
    id: str
    model: str
    version: int
    stage: Stage
    run: str
    task: str
    base_model: str
    metrics: dict[str, Any]
    dataset_fingerprint: str
    lineage: dict[str, Any]
    created_at: int
    stage_changed_at: int
    skipped: list[int] = []  # rollback: the versions it passed over (archived explicitly, or their weights gone)


class EventInfo(BaseModel):
    model: str
    version: int
    action: str
    from_stage: str | None
    to_stage: str
    created_at: int


def missing(run_path: str | Path) -> Path | None:
    """What of a version's run folder serving needs is gone (run.json or the weights in model/), or None."""
    path = Path(run_path)
    for needed in (path, path / RUN_MANIFEST, path / MODEL_DIR):
        if not needed.exists():
            return needed
    return None


def loadable(model: str, version: int, run_path: str, to: str = "go to production", then: str = "promote") -> None:
    """Refuse a version serve cannot load: in production the registry would say it is production while serve kept
    the old one and logged "could not load" every second; in an A/B test (`to`, `then`: what was asked) the test
    would run in the store while no replica applied it."""
    gone = missing(run_path)
    if gone is not None:
        raise ConfigError(f"version {version} of '{model}' cannot {to}: {gone} is gone (moved, or its "
                          f"fine-tuned model was deleted); move the run folder back to {run_path}, or register where "
                          f"it is now with `tunesmith registry add RUN --model {model}` and {then} that version")


def _no_test_running(s: Session, model: str, action: str) -> None:
    """Refuse a production change while an A/B test runs on `model`: serving follows the test's split, not production,
    so a promotion or rollback was accepted, listed as production, and got no traffic until the test stopped."""
    test = s.scalar(select(ABTest).where(ABTest.model == model, ABTest.status == "running"))
    if test is not None:
        names = [v["name"] for v in test.variants]
        raise ABTestRunning(f"'{model}' has a running A/B test ({test.id}, variants {', '.join(names)}) and serving "
                            f"follows it, not production: a {action} now would get no traffic. End the test with "
                            f"`tunesmith ab stop --model {model} --promote VERSION` (one of {', '.join(names)}) to put "
                            f"a variant in production, or `tunesmith ab stop --model {model}` and {action} then")


def _info(v: ModelVersion) -> VersionInfo:
    return VersionInfo(id=v.id, model=v.model, version=v.version, stage=v.stage, run=v.run_path, task=v.task,  # type: ignore[arg-type]
                       base_model=v.base_model, metrics=v.metrics, dataset_fingerprint=v.dataset_fingerprint,
                       lineage=v.lineage, created_at=v.created_at, stage_changed_at=v.stage_changed_at)


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, run_dir: str | Path, model: str, *, stage: Stage = "candidate",
            lineage: dict[str, Any] | None = None, owner: str = "") -> VersionInfo:
        """Register a run folder as the next version of `model` (created on first use)."""
        if not model or len(model) > 128 or not model.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"model name '{model}': use letters, digits, '-', '_' or '.' (at most 128 characters)")
        if stage not in STAGES:
            raise ConfigError(f"stage '{stage}' is not one of {list(STAGES)}")
        path = Path(run_dir).resolve()
        if not is_run(path):
            raise ConfigError(f"{run_dir} is not a finished run folder (no run.json); register what `tunesmith train`, "
                              "`tunesmith export` or a fine-tuning job wrote")
        m = Run(path).manifest
        now = int(time.time())
        with self.store.session() as s:
            # Created on first use by whichever of several concurrent adds comes first; the others find it.
            s.execute(self.store.insert(RegisteredModel)
                      .values(name=model, owner=owner, created_at=now, description=m.description)
                      .on_conflict_do_nothing(index_elements=["name"]))
            registered = self._model(s, model, lock=True)
            if owner and registered.owner != owner:
                # Two API keys' jobs with one suffix: the second key's run had become a version of the first's model
                # (or of an operator's), where promotion, A/B tests and retraining pick versions up.
                raise ConfigError(f"registry model '{model}' belongs to another owner; the job's suffix names it, so "
                                  "this run was not added (a suffix of its own registers it)")
            if any(v.run_path == str(path) for v in registered.versions):
                existing = next(v for v in registered.versions if v.run_path == str(path))
                raise ConfigError(f"{path} is already version {existing.version} of '{model}'")
            other = next((v for v in registered.versions if v.task != m.task), None)
            if other is not None:  # promotion and A/B tests would put one task's model in place of another's
                raise ConfigError(f"'{model}' is a {other.task} model; {run_dir} is {m.task}; register it under "
                                  "another name")
            number = (s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model == model)) or 0) + 1
            version = ModelVersion(
                id=f"mv-{secrets.token_hex(8)}", model=model, version=number, stage="candidate", run_path=str(path),
                task=m.task, base_model=m.base_model, metrics=m.metrics, dataset_fingerprint=m.dataset_fingerprint,
                lineage={"run": str(path), "dataset": m.dataset, "base_model": m.base_model, "method": m.method,
                         **(lineage or {})},
                created_at=now, stage_changed_at=now)
            s.add(version)
            s.add(RegistryEvent(model=model, version=number, action="register", from_stage=None, to_stage="candidate",
                                created_at=now))
            s.flush()
            if stage != "candidate":
                self._set_stage(s, version, stage, "promote" if stage == "production" else "archive")
            return _info(version)

    def versions(self, model: str | None = None) -> list[VersionInfo]:
        with self.store.session() as s:
            stmt = select(ModelVersion).order_by(ModelVersion.model, ModelVersion.version)
            if model is not None:
                self._model(s, model)
                stmt = stmt.where(ModelVersion.model == model)
            return [_info(v) for v in s.scalars(stmt)]

    def models(self) -> list[str]:
        with self.store.session() as s:
            return list(s.scalars(select(RegisteredModel.name).order_by(RegisteredModel.name)))

    def events(self, model: str) -> list[EventInfo]:
        with self.store.session() as s:
            self._model(s, model)
            rows = s.scalars(select(RegistryEvent).where(RegistryEvent.model == model).order_by(RegistryEvent.seq))
            return [EventInfo(model=e.model, version=e.version, action=e.action, from_stage=e.from_stage,
                              to_stage=e.to_stage, created_at=e.created_at) for e in rows]

    def version(self, model: str, version: int) -> VersionInfo:
        with self.store.session() as s:
            return _info(self._version(s, model, version))

    def production(self, model: str) -> VersionInfo | None:
        with self.store.session() as s:
            v = s.scalar(select(ModelVersion).where(ModelVersion.model == model, ModelVersion.stage == "production"))
            return _info(v) if v else None

    def promote(self, model: str, version: int, replacing: int | None = None, session: Session | None = None
                ) -> VersionInfo:
        """`version` goes to production; the one there before is archived (rollback brings it back). `replacing`:
        only if that version is still production (checked under the model's lock), else ProductionChanged. Refused
        while an A/B test runs on the model (ABTestRunning). `session`: in the caller's transaction (ab stop --promote:
        the test stops only if the promotion goes through)."""
        with nullcontext(session) if session is not None else self.store.session() as s:
            target = self._version(s, model, version, lock=True)
            if target.stage == "production":
                raise ConfigError(f"version {version} of '{model}' is already in production")
            if replacing is not None:
                now = s.scalar(select(ModelVersion.version).where(ModelVersion.model == model,
                                                                  ModelVersion.stage == "production"))
                if now != replacing:
                    raise ProductionChanged(f"'{model}' production is version {now}, not {replacing} as when version "
                                            f"{version} was judged against it; it was not promoted")
            loadable(model, version, target.run_path)
            self._set_stage(s, target, "production", "promote")
            return _info(target)

    def rollback(self, model: str) -> VersionInfo:
        """Production goes back to the version that was there before the latest promotion, passing over (and naming in
        `skipped`) versions archived explicitly since (their fine-tuned model deleted) or whose run folders are gone."""
        with self.store.session() as s:
            self._model(s, model, lock=True)
            current = s.scalar(select(ModelVersion).where(ModelVersion.model == model, ModelVersion.stage == "production")
                               .with_for_update())
            if current is None:
                raise ConfigError(f"'{model}' has no version in production to roll back")
            # Production's history as a stack: a promotion pushes its version, a rollback pops back to the version it
            # went to. As a list of every version ever in production, a second rollback went back to the version just
            # rolled away from (3, 2, 3, 2, ...).
            history: list[int] = []
            rolled_back = False
            archived: dict[int, bool] = {}  # archived explicitly since it was last in production
            for e in s.scalars(select(RegistryEvent).where(RegistryEvent.model == model).order_by(RegistryEvent.seq)):
                if e.to_stage == "production":
                    archived[e.version] = False
                    if e.action == "rollback" and history:
                        rolled_back = True
                        # to the version it went to: past the versions it skipped (one pop when it skipped none)
                        if e.version in history[:-1]:
                            while history[-1] != e.version:
                                history.pop()
                        else:
                            history.pop()
                    else:
                        history.append(e.version)
                elif e.action == "archive" and e.to_stage == "archived":
                    archived[e.version] = True  # e.g. its fine-tuned model was deleted: taken out of production
            skipped: list[int] = []
            target = None
            while history:
                number = history.pop()
                if number == current.version or number in skipped:
                    continue
                candidate = self._version(s, model, number, lock=True)
                if archived.get(number) or missing(candidate.run_path) is not None:
                    skipped.append(number)
                    continue
                target = candidate
                break
            if target is None and skipped:
                raise ConfigError(f"'{model}' has no earlier production version left that serve can load: "
                                  f"{', '.join(f'version {n}' for n in skipped)} archived since or their run folders "
                                  f"gone; promote one with `tunesmith registry promote {model} VERSION`")
            if target is None and rolled_back:  # other versions were in production, but rollbacks walked back past them
                raise ConfigError(f"'{model}' has no earlier production version left to roll back to: rollbacks "
                                  f"already walked production back to version {current.version}")
            if target is None:
                raise ConfigError(f"'{model}' version {current.version} is the only version ever in production; "
                                  "there is nothing to roll back to")
            self._set_stage(s, target, "production", "rollback")
            info = _info(target)
            info.skipped = skipped
            return info

    def note(self, model: str, version: int, key: str, value: Any) -> VersionInfo:
        """Set `key` of a version's lineage to `value` (what happened to it since it was registered, e.g. the last
        retraining round run from it); the other keys stay as they are."""
        with self.store.session() as s:
            target = self._version(s, model, version, lock=True)
            target.lineage = {**target.lineage, key: value}  # a new dict: the JSON column sees the change
            return _info(target)

    def archive(self, model: str, version: int) -> VersionInfo:
        with self.store.session() as s:
            target = self._version(s, model, version, lock=True)
            self._set_stage(s, target, "archived", "archive")
            return _info(target)

    # -- inside a transaction ----------------------------------------------------------------------

    def _model(self, s: Session, model: str, lock: bool = False) -> RegisteredModel:
        """The model's row; `lock`: held until the commit, so writers of one model (adds, promotions,
        rollbacks) go one at a time and the next version number or the production version read after it
        cannot change underneath (concurrent adds both took max + 1 and one died on the unique index)."""
        if lock:
            Store.lock(s, RegisteredModel, RegisteredModel.name == model)
        registered = s.get(RegisteredModel, model)
        if registered is None:
            known = list(s.scalars(select(RegisteredModel.name).order_by(RegisteredModel.name)))
            raise NotRegistered(f"no model '{model}' in the registry (registered: {known or 'none'}); "
                              f"add one with `tunesmith registry add RUN --model {model}`")
        return registered

    def _version(self, s: Session, model: str, version: int, lock: bool = False) -> ModelVersion:
        self._model(s, model, lock=lock)
        stmt = select(ModelVersion).where(ModelVersion.model == model, ModelVersion.version == version)
        found = s.scalar(stmt.with_for_update() if lock else stmt)
        if found is None:
            numbers = list(s.scalars(select(ModelVersion.version).where(ModelVersion.model == model)))
            raise NotRegistered(f"'{model}' has no version {version} (versions: {numbers})")
        return found

    def _set_stage(self, s: Session, version: ModelVersion, stage: Stage, action: str) -> None:
        now = int(time.time())
        if stage == "production":  # one at a time: the previous one steps down first (a unique index enforces it)
            _no_test_running(s, version.model, "promotion" if action == "promote" else action)
            for other in s.scalars(select(ModelVersion).where(ModelVersion.model == version.model,
                                                              ModelVersion.stage == "production").with_for_update()):
                if other.id != version.id:
                    other.stage, other.stage_changed_at = "archived", now
                    s.add(RegistryEvent(model=other.model, version=other.version, action=action,
                                        from_stage="production", to_stage="archived", created_at=now))
            s.flush()
        before = version.stage
        version.stage, version.stage_changed_at = stage, now
        s.add(RegistryEvent(model=version.model, version=version.version, action=action, from_stage=before,
                            to_stage=stage, created_at=now))
