"""Search strategies: each proposes the next batch of configurations from the finished ones.

`propose(space, history, count, rng)` sees only records of earlier batches and a generator
seeded from (seed, batch), so a run is reproducible whatever executes the evaluations.

- random: unseen configurations, uniformly;
- nsga2: optuna's NSGA-II, replayed from the history each batch (deterministic, resumable);
- xgboost (default): XGBoost surrogates of every objective and constrained metric (a small
  bootstrap ensemble gives a spread), candidates from random sampling and mutations of the
  front, ranked by the hypervolume they would add with optimistic predictions (mean - spread),
  picked greedily so a batch spreads along the front; a share of each batch explores at random.
"""

from __future__ import annotations

import numpy as np

from codesign.errors import HardwareError
from codesign.hardware import area_mm2
from codesign.tuner.database import Record
from codesign.tuner.pareto import hypervolume, pareto_mask
from codesign.tuner.space import CONSTRAINT_METRICS, OBJECTIVES, SearchSpace


def unseen_random(space: SearchSpace, seen: set, count: int, rng: np.random.Generator, tries: int = 50) -> list[dict]:
    """Up to `count` configurations not in `seen` (whose keys are added to it), uniformly. When no
    more than `count` are left, all of them in a random order: rejection sampling would draw
    `count * tries` times to find the last few."""
    if space.size() - len(seen) <= count:
        rest = [config for config in space.enumerate() if space.key(config) not in seen]
        seen.update(space.key(config) for config in rest)
        return [rest[i] for i in rng.permutation(len(rest))]
    configs: list[dict] = []
    for _ in range(count * tries):
        if len(configs) == count:
            break
        config = space.sample(rng)
        key = space.key(config)
        if key not in seen:
            seen.add(key)
            configs.append(config)
    return configs


def minimised_points(space: SearchSpace, records: list[Record]) -> np.ndarray:
    return np.array(
        [[-r.metrics[o] if OBJECTIVES[o] == "max" else r.metrics[o] for o in space.objectives] for r in records]
    )


class RandomSearch:
    name = "random"

    def propose(self, space: SearchSpace, history: list[Record], count: int, rng: np.random.Generator) -> list[dict]:
        return unseen_random(space, {space.key(r.config) for r in history}, count, rng)


class NSGA2Search:
    """optuna's NSGA-II sampler; its state is rebuilt by replaying the run's history."""

    name = "nsga2"

    def __init__(self, population: int = 16):
        self.population = population

    def propose(self, space: SearchSpace, history: list[Record], count: int, rng: np.random.Generator) -> list[dict]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions = {
            name: optuna.distributions.CategoricalDistribution(list(range(len(choices))))
            for name, choices in space.knobs.items()
        }
        sampler = optuna.samplers.NSGAIISampler(population_size=self.population, seed=int(rng.integers(2**31)))
        directions = ["minimize"] * len(space.objectives)
        study = optuna.create_study(directions=directions, sampler=sampler)
        worst = _penalty(space, history)
        for record in history:
            params = {n: _index(space.knobs[n], record.config[n]) for n in space.knobs}
            values = list(minimised_points(space, [record])[0]) if record.feasible else worst
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, values=values))
        configs = []
        for _ in range(count):
            trial = study.ask(distributions)
            configs.append({n: space.knobs[n][trial.params[n]] for n in space.knobs})
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return configs


def _index(choices: list, value) -> int:
    return next(i for i, c in enumerate(choices) if repr(c) == repr(value))


def _penalty(space: SearchSpace, history: list[Record]) -> list[float]:
    finite = [r for r in history if r.metrics and all(np.isfinite(r.metrics.get(o, np.nan)) for o in space.objectives)]
    if not finite:
        return [1e9] * len(space.objectives)
    return list(minimised_points(space, finite).max(axis=0) * 2 + 1)


class XGBoostSearch:
    name = "xgboost"

    def __init__(
        self, initial: int = 16, pool: int = 1500, ensemble: int = 4, explore: float = 0.15, kappa: float = 1.0
    ):
        self.initial, self.pool, self.ensemble, self.explore, self.kappa = initial, pool, ensemble, explore, kappa

    def propose(self, space: SearchSpace, history: list[Record], count: int, rng: np.random.Generator) -> list[dict]:
        seen = {space.key(r.config) for r in history}
        measured = [r for r in history if r.metrics and np.isfinite(r.metrics.get("latency", np.nan))]
        if len(measured) < self.initial:
            return unseen_random(space, seen, count, rng)
        explore = round(count * self.explore)
        candidates = self._candidates(space, history, seen, rng)
        if not candidates:
            return unseen_random(space, seen, count, rng)
        picks = self._rank(space, history, measured, candidates, count - explore, rng)
        seen.update(space.key(c) for c in picks)
        return picks + unseen_random(space, seen, count - len(picks), rng)

    def _candidates(self, space, history, seen, rng) -> list[dict]:
        pool = unseen_random(space, set(seen), self.pool, rng)
        front = [r for r in history if r.feasible]
        if front:
            best = [front[i] for i in np.flatnonzero(pareto_mask(minimised_points(space, front)))]
            names = list(space.knobs)
            for record in best:
                for _ in range(8):  # neighbours of the front: one knob changed
                    config = dict(record.config)
                    knob = names[int(rng.integers(len(names)))]
                    config[knob] = space.knobs[knob][int(rng.integers(len(space.knobs[knob])))]
                    if space.key(config) not in seen:
                        seen.add(space.key(config))
                        pool.append(config)
        return pool

    def _predict(self, space, measured, candidates) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        import xgboost

        train_x = space.encode([r.config for r in measured])
        test = xgboost.DMatrix(space.encode(candidates))
        metrics = list(dict.fromkeys(space.objectives + [CONSTRAINT_METRICS[c] for c in space.constraints]))
        predictions = {}
        for metric in metrics:
            target = np.array([r.metrics[metric] for r in measured])
            scaled = np.log(target) if metric != "accuracy" else target  # positive quantities span decades
            train = xgboost.DMatrix(train_x, label=scaled)
            runs = []
            for member in range(self.ensemble):
                params = {
                    "max_depth": 4, "eta": 0.1, "subsample": 0.8, "colsample_bytree": 0.9,
                    "seed": member, "nthread": 1, "objective": "reg:squarederror",
                }  # fmt: skip
                runs.append(xgboost.train(params, train, num_boost_round=120).predict(test))
            runs = np.array(runs)
            mean, spread = runs.mean(axis=0), runs.std(axis=0)
            predictions[metric] = (mean, spread) if metric == "accuracy" else (np.exp(mean), np.exp(mean) * spread)
        return predictions

    def _rank(self, space, history, measured, candidates, count, rng) -> list[dict]:
        if count <= 0:
            return []
        predictions = self._predict(space, measured, candidates)
        optimistic = np.stack(
            [
                -(predictions[o][0] + self.kappa * predictions[o][1])
                if OBJECTIVES[o] == "max"
                else predictions[o][0] - self.kappa * predictions[o][1]
                for o in space.objectives
            ],
            axis=1,
        )
        allowed = self._predicted_feasible(space, history, predictions, candidates)
        feasible = [r for r in history if r.feasible]
        observed = minimised_points(space, feasible) if feasible else np.empty((0, len(space.objectives)))
        everything = np.vstack([observed, optimistic]) if len(observed) else optimistic
        low, high = everything.min(axis=0), everything.max(axis=0)
        scale = np.where(high > low, high - low, 1.0)
        front = (observed - low) / scale
        points = (optimistic - low) / scale
        reference = np.full(points.shape[1], 1.1)
        picks: list[int] = []
        for _ in range(count):
            base = hypervolume(front, reference) if len(front) else 0.0
            scores = np.full(len(points), -np.inf)
            for i in np.flatnonzero(allowed):
                if i in picks or (len(front) and np.any(np.all(front <= points[i], axis=1))):
                    continue  # already picked, or dominated: adds nothing
                scores[i] = (
                    hypervolume(np.vstack([front, points[i]]) if len(front) else points[i : i + 1], reference) - base
                )
            if not np.isfinite(scores).any():
                break
            best = int(np.argmax(scores))
            picks.append(best)
            front = np.vstack([front, points[best]]) if len(front) else points[best : best + 1]
        return [candidates[i] for i in picks]

    def _predicted_feasible(self, space, history, predictions, candidates) -> np.ndarray:
        allowed = np.ones(len(candidates), dtype=bool)
        limits = space.constraints
        if "area_mm2_max" in limits:  # area is exact and cheap: no need to predict it
            allowed &= np.array([_area(space, c) <= limits["area_mm2_max"] for c in candidates])
        if "accuracy_drop_max" in limits:
            float_accuracy = next(r.metrics["float_accuracy"] for r in history if r.metrics)
            mean, spread = predictions["accuracy"]
            allowed &= mean + self.kappa * spread >= float_accuracy - limits["accuracy_drop_max"] - 1e-9
        for key, metric, unit in (("latency_ms_max", "latency", 1e3), ("energy_mj_max", "energy", 1e3)):
            if key in limits:
                mean, spread = predictions[metric]
                allowed &= (mean - self.kappa * spread) * unit <= limits[key]
        return allowed


def _area(space: SearchSpace, config: dict) -> float:
    try:
        return area_mm2(space.hardware(config))["total"]
    except HardwareError:
        return float("inf")


STRATEGIES = {"xgboost": XGBoostSearch, "random": RandomSearch, "nsga2": NSGA2Search}
