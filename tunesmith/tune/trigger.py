"""When is a retrain due? `tunesmith retrain --if-needed` asks this (from cron, say).

Due when enough corrections arrived that production has not been trained on (retrain.min_corrections),
counted from the last round run from this production where one ran (a round that kept its candidate a
candidate, or found nothing new to train on, ran again on the same corrections at every cron tick), or
when the inputs served since production went live drifted from its training data past
retrain.drift_threshold (PSI of input lengths and of predicted labels, the monitoring report's
measures; only with enough logged requests for PSI to mean something).

A round claims production before it builds anything (claim(): in its lineage, under the registry's model lock), and
check() counts a live claim as tried: two overlapping cron ticks had both trained on the same corrections.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from tunesmith.config import RetrainSpec
from tunesmith.models.hardware import process_running
from tunesmith.monitor.log import inputs_logged, json_present
from tunesmith.registry.service import VersionInfo
from tunesmith.store.db import Store
from tunesmith.store.schema import Feedback, ModelVersion, Prediction, RegisteredModel

MIN_DRIFT_INPUTS = 200  # PSI over fewer live inputs is mostly sampling noise (10 bins x ~20 each)
DRIFT_SAMPLE = 5000  # most recent logged requests compared (PSI needs a sample, not the whole log)
LAST_ROUND = "last_retrain_round"  # production's lineage key: the cutoff of the last round run from it
ROUND_CLAIM = "retrain_in_progress"  # production's lineage key: a round from it is running (since, pid, host)
# A claim this old is a crashed round's on another host (on this host, its process being gone says so at once). Generous:
# a live round's claim must never expire while it trains.
CLAIM_STALE_S = 24 * 3600


@dataclass
class TriggerStatus:
    model: str
    production: int
    new_corrections: int  # corrections not yet in production's training data
    untried: int  # of them, those newer than the last round run from this production (all of them if none ran)
    min_corrections: int
    drift_psi: float | None  # the larger of the length and label PSIs; None: too few logged requests
    drift_threshold: float | None
    live_requests: int  # logged requests since production went live
    last_round: float | None = None  # the newest correction the last round from this production exported
    last_result: str | None = None  # what the last round from this production came to ("failed: ..." included)
    in_progress: dict[str, Any] | None = None  # a live claim of a round from this production (see claim())
    reasons: list[str] = field(default_factory=list)  # why it is due (empty: not due)

    @property
    def due(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "due": self.due}


def _corrected() -> Any:
    """Feedback rows that carry a correction (not only a rating). A rating's label is stored as JSON's null, which IS
    NOT NULL lets through: 20 thumbs-ups had made a retrain due."""
    return json_present(Feedback.corrected_label) | (Feedback.corrected_value.is_not(None)) | \
        (Feedback.corrected_answer.is_not(None))


def corrections_since(store: Store, model: str, since: float) -> tuple[int, float | None]:
    """(count, newest time) of the answers of `model` corrected after `since`: an answer corrected again (retries
    with a comment, several reviewers) counts once, as the export writes it once."""
    corrected = (select(Feedback.request_id, Feedback.item_index, func.max(Feedback.created).label("created"))
                 .join(Prediction, Feedback.request_id == Prediction.request_id)
                 # with its input logged: one without (--no-log-inputs, or purged) cannot be exported to train on
                 .where(Prediction.model == model, Feedback.created > since, _corrected(), inputs_logged())
                 .group_by(Feedback.request_id, Feedback.item_index).subquery())
    with store.session() as s:
        row = s.execute(select(func.count(), func.max(corrected.c.created)).select_from(corrected)).one()
    return int(row[0]), (float(row[1]) if row[1] is not None else None)


def trained_until(production: VersionInfo) -> float:
    """The newest correction production was trained on (0: it never saw any)."""
    return float(production.lineage.get("retrain", {}).get("feedback_until") or 0.0)


def round_record(production: VersionInfo, feedback_until: float, **details: Any) -> dict[str, Any]:
    """What a round run from `production` leaves in its lineage (under LAST_ROUND) for the next check()."""
    return {"feedback_until": feedback_until, "production_since": production.stage_changed_at, **details}


def last_round(production: VersionInfo) -> float | None:
    """The newest correction the last round run from this production exported; None when no round ran since it went
    to production (a version rolled back to production again starts afresh: its stage_changed_at moved)."""
    record = production.lineage.get(LAST_ROUND)
    if not isinstance(record, dict) or record.get("production_since") != production.stage_changed_at:
        return None
    return float(record.get("feedback_until") or 0.0)


def check(store: Store, model: str, production: VersionInfo, spec: RetrainSpec, mine: str | None = None) -> TriggerStatus:
    """Is a round from `production` due? A live claim of another round (not `mine`) counts as tried: not due."""
    since = trained_until(production)
    new, _ = corrections_since(store, model, since)
    last = last_round(production)
    untried = corrections_since(store, model, last)[0] if last is not None and last > since else new
    status = TriggerStatus(model=model, production=production.version, new_corrections=new, untried=untried,
                           min_corrections=spec.min_corrections, drift_psi=None, drift_threshold=spec.drift_threshold,
                           live_requests=0, last_round=last,
                           last_result=production.lineage[LAST_ROUND].get("result") if last is not None else None)
    claim_now = live_claim(production)
    if claim_now is not None and claim_now.get("token") != mine:
        status.in_progress = claim_now
        return status
    if untried >= spec.min_corrections:
        status.reasons.append(f"{untried} new correction(s) >= retrain.min_corrections ({spec.min_corrections})"
                              + (f" since the last round from version {production.version}" if untried != new else ""))
    if spec.drift_threshold is not None:
        status.drift_psi, status.live_requests = _drift(store, model, production)
        if status.drift_psi is not None and status.drift_psi >= spec.drift_threshold:
            status.reasons.append(f"input drift PSI {status.drift_psi:.3f} >= retrain.drift_threshold ({spec.drift_threshold:g}) "
                                  f"over {status.live_requests} request(s)")
    return status


def live_claim(production: VersionInfo) -> dict[str, Any] | None:
    """The claim of a round from `production` that is running, or None: none, one from an earlier stint in production,
    or a stale one (its process gone from this host, or older than CLAIM_STALE_S: a crashed round never cleared it)."""
    claim = production.lineage.get(ROUND_CLAIM)
    if not isinstance(claim, dict) or claim.get("production_since") != production.stage_changed_at:
        return None
    if time.time() - float(claim.get("since") or 0) > CLAIM_STALE_S:
        return None
    if claim.get("host") == socket.gethostname() and not process_running(int(claim.get("pid") or 0)):
        return None
    return claim


def describe_claim(claim: dict[str, Any]) -> str:
    since = datetime.fromtimestamp(float(claim.get("since") or 0), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"since {since} (pid {claim.get('pid')} on {claim.get('host')}"
            + (f", folder {claim['folder']}" if claim.get("folder") else "") + ")")


def claim(store: Store, production: VersionInfo, **details: Any) -> tuple[str | None, dict[str, Any] | None]:
    """Claim the next round from `production` for this process, under the model's lock (the registry's), so two
    overlapping cron ticks cannot both train on the same corrections: (token, None) when claimed, (None, the other
    round's claim) when a live one is there. The claim is production's lineage's ROUND_CLAIM, cleared by release()."""
    with store.session() as s:
        row = _locked(s, production)
        if row is None:  # deleted meanwhile: nothing to keep a claim in
            return None, None
        held = live_claim(_with_lineage(production, row))
        if held is not None:
            return None, held
        token = secrets.token_hex(8)
        row.lineage = {**row.lineage, ROUND_CLAIM: {"token": token, "since": time.time(), "pid": os.getpid(),
                                                    "host": socket.gethostname(),
                                                    "production_since": row.stage_changed_at, **details}}
        return token, None


def release(store: Store, production: VersionInfo, token: str | None) -> None:
    """Clear this round's claim (only its own: a stale one taken over since belongs to the other round)."""
    if token is None:
        return
    with store.session() as s:
        row = _locked(s, production)
        if row is not None and (row.lineage.get(ROUND_CLAIM) or {}).get("token") == token:
            row.lineage = {k: v for k, v in row.lineage.items() if k != ROUND_CLAIM}


def _locked(s: Any, production: VersionInfo) -> ModelVersion | None:
    """Production's row, under the model's lock (as the registry's writers take it) and the row's own."""
    Store.lock(s, RegisteredModel, RegisteredModel.name == production.model)
    return s.scalar(select(ModelVersion).where(ModelVersion.model == production.model,
                                               ModelVersion.version == production.version).with_for_update())


def _with_lineage(production: VersionInfo, row: ModelVersion) -> VersionInfo:
    return production.model_copy(update={"lineage": dict(row.lineage), "stage_changed_at": row.stage_changed_at})


def _drift(store: Store, model: str, production: VersionInfo) -> tuple[float | None, int]:
    """The largest PSI (input lengths, predicted labels or values) of the traffic since production went live
    against its training data: the same reading as the server's drift gauges and the monitoring report."""
    from tunesmith.monitor.live import TrainingProfile, drift_of, live_sample

    profile = TrainingProfile.of_run(production.run, production.lineage.get("dataset"))  # the full data
    if profile is None:  # the run or its dataset folder is gone
        return None, 0
    # production's own traffic, as the server's drift gauges read it: an A/B challenger's answers are not its own
    sample = live_sample(store, model, since=production.stage_changed_at, limit=DRIFT_SAMPLE,
                         model_version=f"{model}-v{production.version}")
    if len(sample.texts) < MIN_DRIFT_INPUTS:
        return None, sample.requests
    report = drift_of(profile, sample)
    scores = [report[k]["psi"] for k in ("lengths", "labels", "values") if k in report]
    return (max(scores) if scores else None), sample.requests
