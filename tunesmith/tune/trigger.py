"""When is a retrain due? `tunesmith retrain --if-needed` asks this (from cron, say).

Due when enough corrections arrived that production has not been trained on (retrain.min_corrections),
counted from the last round run from this production where one ran (a round that kept its candidate a
candidate, or found nothing new to train on, ran again on the same corrections at every cron tick), or
when the inputs served since production went live drifted from its training data past
retrain.drift_threshold (PSI of input lengths and of predicted labels, the monitoring report's
measures; only with enough logged requests for PSI to mean something).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select

from tunesmith.config import RetrainSpec
from tunesmith.monitor.log import inputs_logged, json_present
from tunesmith.registry.service import VersionInfo
from tunesmith.store.db import Store
from tunesmith.store.schema import Feedback, Prediction

MIN_DRIFT_INPUTS = 200  # PSI over fewer live inputs is mostly sampling noise (10 bins x ~20 each)
DRIFT_SAMPLE = 5000  # most recent logged requests compared (PSI needs a sample, not the whole log)
LAST_ROUND = "last_retrain_round"  # production's lineage key: the cutoff of the last round run from it


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


def check(store: Store, model: str, production: VersionInfo, spec: RetrainSpec) -> TriggerStatus:
    since = trained_until(production)
    new, _ = corrections_since(store, model, since)
    last = last_round(production)
    untried = corrections_since(store, model, last)[0] if last is not None and last > since else new
    status = TriggerStatus(model=model, production=production.version, new_corrections=new, untried=untried,
                           min_corrections=spec.min_corrections, drift_psi=None, drift_threshold=spec.drift_threshold,
                           live_requests=0, last_round=last)
    if untried >= spec.min_corrections:
        status.reasons.append(f"{untried} new correction(s) >= retrain.min_corrections ({spec.min_corrections})"
                              + (f" since the last round from version {production.version}" if untried != new else ""))
    if spec.drift_threshold is not None:
        status.drift_psi, status.live_requests = _drift(store, model, production)
        if status.drift_psi is not None and status.drift_psi >= spec.drift_threshold:
            status.reasons.append(f"input drift PSI {status.drift_psi:.3f} >= retrain.drift_threshold ({spec.drift_threshold:g}) "
                                  f"over {status.live_requests} request(s)")
    return status


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
