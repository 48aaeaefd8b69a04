"""A/B tests between versions of a registry model: start, route, measure, decide, stop.

The split is sticky: a user id hashes (with the test's id) to a point in [0, 1) that picks a
variant by the weights, so a user keeps their variant for the whole test; a request without a user
id is assigned at random. Outcomes come from feedback joined to the prediction log by request id:
the positive rate (thumbs up, or a score of 4-5), the mean score, accuracy on corrected labels, and
latency. The verdict is a fixed-horizon test (monitor/stats.py) over users, the unit the split randomises
(a request without a user is a unit of its own): each user counts once, with the first answer they rated. No
winner is declared before every variant has the planned number of users, and the test reads each variant's
first `horizon` users (in the order they came) even when more have arrived since, so the verdict is read once
and looking at the status often, before or after the horizon, does not inflate false positives.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tunesmith.errors import ConfigError, NotFound
from tunesmith.monitor import stats
from tunesmith.monitor.feedback import first_per_item, is_positive, is_rating
from tunesmith.registry.service import Registry, loadable
from tunesmith.store.db import Store
from tunesmith.store.schema import ABTest, Feedback, ModelVersion, Prediction

WEIGHT_TOLERANCE = 0.005  # an even three-way split written to three places (0.333 each) is one; weights are then scaled to 1


def _refuse_a_second(s: Any, model: str) -> None:
    running = s.scalar(select(ABTest).where(ABTest.model == model, ABTest.status == "running"))
    if running is not None:
        raise ConfigError(f"'{model}' already has a running A/B test ({running.id}); stop it first with "
                          f"`tunesmith ab stop --model {model}`")


def _first_per_user(rows: list[Any]) -> list[Feedback]:
    """Rated rows (Feedback, variant, outputs, the request's user) -> each user's first rating. The unit is what the
    split randomised: the request's user (hashed), else the request alone (picked at random). Never the feedback's
    user id: it names who rated, not who was split, so 400 customers rated by 4 support agents counted as 2 users per
    variant, and one reviewer rating 400 anonymous requests as 1."""
    seen: set[str] = set()
    kept = []
    for f, _, _, request_user in rows:
        unit = request_user or f"request:{f.request_id}"
        if unit not in seen:
            seen.add(unit)
            kept.append(f)
    return kept


@dataclass(frozen=True)
class Route:
    """A running test as the server applies it."""

    test_id: str
    variants: list[tuple[str, int, float]]  # (name, version, weight)
    shadow: tuple[str, int] | None

    def pick(self, user: str | None) -> tuple[str, int]:
        """(variant, version) for a request: by the user's stable hash, else at random."""
        if user:
            digest = hashlib.sha256(f"{self.test_id}:{user}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") / 2**64
        else:
            point = random.random()
        total = 0.0
        for name, version, weight in self.variants:
            total += weight
            if point < total:
                return name, version
        name, version, _ = self.variants[-1]
        return name, version


class VariantOutcome(BaseModel):
    name: str
    version: int
    weight: float
    requests: int
    feedback: int
    positive: int
    positive_rate: float | None
    mean_score: float | None
    corrected_accuracy: float | None
    latency_p50_ms: float | None


class ABStatus(BaseModel):
    id: str
    model: str
    status: str
    horizon: int
    alpha: float
    variants: list[VariantOutcome]
    shadow: dict[str, Any] | None
    test: str | None  # the statistical test used
    p_value: float | None
    difference: float | None
    difference_ci: tuple[float, float] | None
    verdict: str  # plain words
    method: str
    winner: str | None
    decided: bool
    scores: dict[str, Any] | None = None  # 1-5 scores, where given: Welch's t-test (or Welch's ANOVA) and its verdict


def parse_variants(text: str) -> dict[str, float]:
    """`v3=0.5,v4=0.5` -> {"v3": 0.5, "v4": 0.5}, with errors that say what is wrong."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        if name.strip() in out:
            raise ConfigError(f"--variants: '{name.strip()}' is named twice; give each variant one weight")
        try:
            out[name.strip()] = float(weight) if sep else float("nan")
        except ValueError:
            raise ConfigError(f"--variants: '{part}' must look like v3=0.5") from None
        if not sep:
            raise ConfigError(f"--variants: '{part}' has no weight; write {part}=0.5")
    return out


def _version_of(name: str) -> int:
    if not (name.startswith("v") and name[1:].isdigit()):
        raise ConfigError(f"variant '{name}' must name a registered version as v<number> (e.g. v3)")
    return int(name[1:])


class ABService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = Registry(store)

    def start(self, model: str, weights: dict[str, float], *, shadow: str | None = None, alpha: float = 0.05,
              baseline: float = 0.5, minimum_detectable_effect: float = 0.05, power: float = 0.8,
              horizon: int | None = None) -> ABStatus:
        """Start a test; the horizon (users per variant) comes from the effect worth detecting."""
        if len(weights) < 2:
            raise ConfigError("an A/B test needs at least two variants, e.g. --variants v3=0.5,v4=0.5")
        if any(not 0 < w <= 1 for w in weights.values()):
            raise ConfigError(f"variant weights must be between 0 and 1, got {weights}")
        total = sum(weights.values())
        if abs(total - 1) > WEIGHT_TOLERANCE:
            raise ConfigError(f"variant weights must sum to 1, they sum to {total:g} ({weights})")
        weights = {name: w / total for name, w in weights.items()}  # every user lands in a variant
        versions = {name: _version_of(name) for name in weights}
        for name, version in versions.items():
            self._servable(model, version, "be an A/B test's variant")
        shadow_entry = None
        if shadow:
            shadow_entry = {"name": shadow, "version": _version_of(shadow)}
            if shadow in weights:
                raise ConfigError(f"the shadow '{shadow}' is already a variant; a shadow gets a copy of the traffic, not a share")
            self._servable(model, shadow_entry["version"], "be an A/B test's shadow")
        try:  # checked before the test is stored: a stored bad alpha or horizon would break every later status
            stats.check_alpha(alpha)
            # baseline and MDE only plan a horizon: a given one stands even where baseline + MDE leaves (0, 1)
            if horizon is None:
                horizon = stats.sample_size_proportions(baseline, minimum_detectable_effect, alpha=alpha, power=power)
            per_variant = stats.Horizon(horizon).per_variant
        except ValueError as err:
            raise ConfigError(f"A/B test on '{model}': {err}") from None
        try:
            with self.store.session() as s:
                _refuse_a_second(s, model)
                test = ABTest(id=f"ab-{secrets.token_hex(8)}", model=model, status="running",
                              variants=[{"name": n, "version": versions[n], "weight": w} for n, w in weights.items()],
                              shadow=shadow_entry, alpha=alpha, horizon=int(per_variant), created=time.time())
                s.add(test)
                test_id = test.id
        except IntegrityError:
            # Two starts at once both found none running; the unique index (uq_ab_tests_one_running) let one in, and
            # the other had a raw IntegrityError: it is told which test won (the transaction is rolled back).
            with self.store.session() as s:
                _refuse_a_second(s, model)
            raise
        return self.status(model, test_id)

    def _servable(self, model: str, version: int, to: str) -> None:
        """Registered (NotRegistered names the model and version) and its run folder there: a test on a version no
        replica can load was stored as running while every replica logged "could not apply" and served as before."""
        info = self.registry.version(model, version)
        loadable(model, version, info.run, to=to, then="test")

    def running(self, model: str) -> Route | None:
        with self.store.session() as s:
            test = s.scalar(select(ABTest).where(ABTest.model == model, ABTest.status == "running"))
            if test is None:
                return None
            return Route(test.id, [(v["name"], v["version"], v["weight"]) for v in test.variants],
                         (test.shadow["name"], test.shadow["version"]) if test.shadow else None)

    def _test(self, s: Any, model: str, test_id: str | None) -> ABTest:
        stmt = select(ABTest).where(ABTest.model == model)
        stmt = stmt.where(ABTest.id == test_id) if test_id else stmt.order_by(ABTest.created.desc())
        test = s.scalars(stmt).first()
        if test is None:
            raise NotFound(f"'{model}' has no A/B test; start one with `tunesmith ab start --model {model} "
                              "--variants v1=0.5,v2=0.5`")
        return test

    def status(self, model: str, test_id: str | None = None) -> ABStatus:
        """Per-variant outcomes and the verdict of the running (or latest) test on `model`."""
        with self.store.session() as s:
            test = self._test(s, model, test_id)
            names = [v["name"] for v in test.variants]
            window = [Prediction.model == model, Prediction.created >= test.created, Prediction.variant.in_(names)]
            if test.stopped is not None:  # a later test may reuse the variant names: its traffic is not this one's
                window.append(Prediction.created <= test.stopped)
            predictions = s.execute(select(Prediction.request_id, Prediction.variant, Prediction.latency_ms, Prediction.outputs)
                                    .where(*window)).all()
            feedback = s.execute(select(Feedback, Prediction.variant, Prediction.outputs, Prediction.user_id)
                                 .join(Prediction, Feedback.request_id == Prediction.request_id)
                                 .where(*window).order_by(Feedback.created, Feedback.id)).all()
            info = {"id": test.id, "status": test.status, "horizon": test.horizon, "alpha": test.alpha,
                    "variants": list(test.variants), "shadow": test.shadow, "winner": test.winner}
        # One rating and one correction per answer (a request's item), its first: a re-rated answer counted again, so
        # one user rating one answer per variant 30 times reached a horizon of 30 and declared a winner.
        rated_rows = first_per_item([r for r in feedback if is_rating(r[0])], lambda r: r[0])
        corrected_rows = first_per_item([r for r in feedback if r[0].corrected_label is not None], lambda r: r[0])
        outcomes = []
        trials, successes, scores = {}, {}, {}
        for v in info["variants"]:
            rated = [f for f, variant, _, _ in rated_rows if variant == v["name"]]
            positive = sum(1 for f in rated if is_positive(f))
            # only answers whose output was logged can be judged (--no-log-inputs, or purged: all had counted as wrong);
            # an empty label set (nothing over a multi-label threshold) is a prediction, as in live.py
            corrected = [(f, labels) for f, variant, out, _ in corrected_rows
                         if variant == v["name"] and (labels := _predicted_labels(out, f.item_index)) is not None]
            right = sum(1 for f, labels in corrected if labels == {str(x) for x in f.corrected_label or []})
            latencies = sorted(lat for _, variant, lat, _ in predictions if variant == v["name"])
            score_values = [float(f.score) for f in rated if f.score is not None]
            # One rating per user: the split randomises users (sticky), and one user's ratings move together (some
            # rate up more than others), so counted one by one they made the z-test see far more evidence than there
            # was: with no difference, 20 users x 15 ratings named a winner in 43% of tests at alpha 5%. A request
            # without a user was randomised alone, and counts alone.
            by_user = _first_per_user([r for r in rated_rows if r[1] == v["name"]])
            outcomes.append(VariantOutcome(
                name=v["name"], version=v["version"], weight=v["weight"],
                requests=sum(1 for _, variant, _, _ in predictions if variant == v["name"]), feedback=len(rated),
                positive=positive, positive_rate=positive / len(rated) if rated else None,
                mean_score=sum(score_values) / len(score_values) if score_values else None,
                corrected_accuracy=right / len(corrected) if corrected else None,
                latency_p50_ms=float(np.percentile(latencies, 50)) if latencies else None))  # as the report's
            # The test reads the first `horizon` users only: testing again as more arrive is peeking after the horizon.
            first = by_user[:info["horizon"]]
            trials[v["name"]] = len(first)
            successes[v["name"]] = sum(1 for f in first if is_positive(f))
            scores[v["name"]] = [float(f.score) for f in by_user if f.score is not None][:info["horizon"]]
        horizon = stats.Horizon(info["horizon"])
        test_name = p_value = difference = ci = None
        winner = info["winner"]
        if all(n > 0 for n in trials.values()):
            result = stats.compare_proportions(successes, trials, alpha=info["alpha"])
            reading = stats.verdict(result, horizon, outcome="positive")
            test_name, p_value, difference, ci = result.test, result.p_value, result.difference, result.difference_ci
            words, method, decided = reading.message, reading.method, reading.decided
            winner = winner or (reading.winner if reading.decided else None)
        else:
            waiting = [n for n, t in trials.items() if t == 0]
            words = f"keep collecting: no rated feedback yet for {', '.join(waiting)} (horizon {horizon.per_variant} per variant)"
            method, decided = f"fixed horizon of {horizon.per_variant} per variant, alpha {info['alpha']:g}, two-sided", False
        score_result = None
        if all(len(values) >= 2 for values in scores.values()):
            means = stats.compare_means(scores, alpha=info["alpha"])
            reading = stats.verdict(means, horizon, outcome="score")
            score_result = {"test": means.test, "p_value": means.p_value, "difference": means.difference,
                            "difference_ci": means.difference_ci, "verdict": reading.message, "decided": reading.decided,
                            "winner": reading.winner if reading.decided else None}
        return ABStatus(id=info["id"], model=model, status=info["status"], horizon=info["horizon"], alpha=info["alpha"],
                        variants=outcomes, shadow=info["shadow"], test=test_name, p_value=p_value, difference=difference,
                        difference_ci=ci, verdict=words, method=method, winner=winner, decided=decided, scores=score_result)

    def stop(self, model: str, promote: str | None = None) -> ABStatus:
        """End the running test; `promote` puts that variant's version in production. One transaction: a promotion the
        registry refuses (its run folder gone) leaves the test running, with no winner, for a retry; stopped first,
        the test had ended with that winner recorded and nothing promoted."""
        with self.store.session() as s:
            running = (ABTest.model == model, ABTest.status == "running")
            Store.lock(s, ABTest, *running)  # two stops at once: the second finds none running
            test = s.scalar(select(ABTest).where(*running))
            if test is None:
                raise ConfigError(f"'{model}' has no running A/B test")
            names = {v["name"]: v["version"] for v in test.variants}
            if promote is not None and promote not in names:
                raise ConfigError(f"--promote {promote}: not a variant of this test ({sorted(names)})")
            test.status, test.stopped, test.winner = "stopped", time.time(), promote
            test_id = test.id
            s.flush()  # stopped in this transaction: the registry refuses production changes while a test runs
            if promote is not None and not self._in_production(s, model, names[promote]):
                self.registry.promote(model, names[promote], session=s)
        return self.status(model, test_id)

    @staticmethod
    def _in_production(s: Any, model: str, version: int) -> bool:
        """Keeping production (the incumbent won) is no promotion: the registry refuses it as already there."""
        return s.scalar(select(ModelVersion.version).where(ModelVersion.model == model,
                                                           ModelVersion.stage == "production")) == version


def _predicted_labels(outputs: Any, index: int) -> set[str] | None:
    """The labels logged for item `index` (a multi-label list, maybe empty), as live.py reads them; None where no label
    was logged (outputs not logged or purged, or a value)."""
    if not isinstance(outputs, list) or index >= len(outputs) or not isinstance(outputs[index], dict):
        return None
    label = outputs[index].get("label")
    if label is None:
        return None
    return {str(x) for x in label} if isinstance(label, list) else {str(label)}
