"""All probes of a run, measured at step 0 (pi_0) and after every day: the loop's ``probe_fn``.

:class:`DailyProbes` is a callable ``probe_fn(step, state) -> rows`` for
:func:`recsys_onpolicy.loop.run`. It draws the fixed :class:`ProbeSet` at step 0 from the
probes' own generator (stream ``"probe_set"`` of the run's seed), keeps it as plain tensors in
``state.probe_state`` (a checkpoint that saves that dict lets a resumed run probe the same
requests), and measures every family the :class:`ProbeConfig` turns on:

1. scores of the probe requests by the current policy pi_t (and pi_0 for KL), once per step;
2. ``probe/auc``, ``probe/auc_oracle`` per cohort (:mod:`.auc`);
3. ``target/expected_clicks`` per group (``train`` = cohorts never removed, ``heldout`` = the
   removed ones), ``target/gain`` and ``probe/drop`` against the step-0 values read back from
   the run's own rows (:mod:`.target`);
4. ``probe/kl_to_base`` (exact, first position) and ``probe/kl_to_base_slate`` (Monte Carlo) per
   group: the mean over the group's probe requests (:mod:`.kl`);
5. ``feedback/*`` of the day just served (from step 1 on) (:mod:`.feedback`);
6. ``drift/*`` of the policy against pi_0 (:mod:`.drift`).

Forgetting needs the removal day and a paired control run: compute it after the runs with
:func:`recsys_onpolicy.probes.forgetting.forgetting_rows`.

Each ``measure_*`` function takes explicit arguments and returns ``(metric, group, value)``
triples, so other drivers can call them without a run state.
"""
from __future__ import annotations

import math

import torch

from recsys_onpolicy.probes.auc import cohort_holdout_auc
from recsys_onpolicy.probes.config import ProbeConfig
from recsys_onpolicy.probes.drift import model_parameters, parameter_drift, rows_touched_by_cohort
from recsys_onpolicy.probes.feedback import feedback_metrics
from recsys_onpolicy.probes.forgetting import cohort_group
from recsys_onpolicy.probes.kl import first_position_kl, slate_kl
from recsys_onpolicy.probes.probe_set import ProbeSet, make_probe_set, score_probes
from recsys_onpolicy.probes.target import gain_drop, served_expected_clicks
from recsys_onpolicy.run_state import stream_generator
from simulators.rng import make_generator
from simulators.world import World

Measurement = tuple[str, "str | None", float]  # (metric, group, value)


def measure_auc(world: World, probe: ProbeSet, scores_t: torch.Tensor,
                noise_free: bool) -> list[Measurement]:
    """``probe/auc`` and ``probe/auc_oracle`` of every cohort (group ``c<k>``)."""
    out = []
    for k, (model_auc, oracle_auc) in cohort_holdout_auc(world, probe, scores_t, noise_free).items():
        out += [("probe/auc", cohort_group(k), model_auc),
                ("probe/auc_oracle", cohort_group(k), oracle_auc)]
    return out


def measure_target(world: World, probe: ProbeSet, scores_t: torch.Tensor,
                   groups: dict[str, list[int]], temperature: float,
                   n_samples: int) -> list[Measurement]:
    """``target/expected_clicks`` of each group with probe requests (see :mod:`.target`)."""
    gen = make_generator(probe.sample_seed, world.device)  # same Gumbel noise every step
    per_request = served_expected_clicks(world, probe.users, probe.candidates, scores_t,
                                         temperature, n_samples, gen)  # (P,)
    return [("target/expected_clicks", g, float(per_request[rows].double().mean()))
            for g, cohorts in groups.items() if (rows := probe.rows_of(cohorts)).any()]


def measure_kl(probe: ProbeSet, scores_0: torch.Tensor, scores_t: torch.Tensor,
               groups: dict[str, list[int]], slate_size: int, temperature: float,
               n_samples: int) -> list[Measurement]:
    """``probe/kl_to_base`` and ``probe/kl_to_base_slate``: means over each group's requests."""
    gen = make_generator(probe.sample_seed + 1, scores_0.device)  # fixed draws from pi_0
    exact = first_position_kl(scores_0, scores_t, temperature)  # (P,)
    mc = slate_kl(scores_0, scores_t, slate_size, n_samples, gen, temperature)  # (P,)
    out = []
    for g, cohorts in groups.items():
        rows = probe.rows_of(cohorts)
        if rows.any():
            out += [("probe/kl_to_base", g, float(exact[rows].mean())),
                    ("probe/kl_to_base_slate", g, float(mc[rows].mean()))]
    return out


def measure_gain_drop(target: list[Measurement], baseline: dict[str, float]) -> list[Measurement]:
    """``target/gain`` and ``probe/drop`` (group None) from this step's expected clicks and the
    step-0 ones (``{group: value}``)."""
    now = {g: v for m, g, v in target if m == "target/expected_clicks"}
    return [(m, None, v) for m, v in gain_drop(now, baseline).items()]


def measure_drift(policy, reference, cohort: torch.Tensor) -> list[Measurement]:
    """``drift/*`` of ``policy`` against ``reference`` (pi_0); rows touched per cohort."""
    dense_t, tables_t = model_parameters(policy)
    dense_0, tables_0 = model_parameters(reference)
    out = [(m, None, v) for m, v in parameter_drift(dense_0, tables_0, dense_t, tables_t).items()]
    touched = rows_touched_by_cohort(tables_0["user"], tables_t["user"], cohort)
    return out + [("drift/rows_touched", cohort_group(k), v) for k, v in touched.items()]


class DailyProbes:
    """``probe_fn(step, state) -> rows`` for :func:`recsys_onpolicy.loop.run` (module docstring).

    Reads from ``state`` (the loop's ``RunState``): ``config.seed``,
    ``config.serving_temperature``, ``world``, ``policy``, ``reference`` (pi_0), ``log`` (the
    day just served, None at step 0), ``rows`` (the run's rows so far), ``groups()``,
    ``rows_for(step, values, group)``, and ``probe_state`` (a dict the checkpoint keeps;
    created if missing).

    Args:
        cfg: which probes and how many probe requests (default :class:`ProbeConfig`).
    """

    def __init__(self, cfg: ProbeConfig | None = None) -> None:
        self.cfg = cfg or ProbeConfig()

    def probe_set(self, step: int, state) -> ProbeSet:
        """The run's probe set, kept as plain tensors in ``state.probe_state["probe_set"]``
        (drawn at step 0; the slot is created when the state lacks it, but only a state whose
        checkpoint saves ``probe_state`` can resume). Nothing is cached on ``self``, so one
        instance can serve several runs."""
        world = state.world
        store = getattr(state, "probe_state", None)
        if store is None:
            store = {}
            state.probe_state = store
        if "probe_set" not in store:
            if step != 0:
                raise RuntimeError(
                    f"DailyProbes: no probe set at step {step}. It is drawn at step 0 and must "
                    "come back with the checkpoint on resume: RunState needs a 'probe_state' "
                    "dict that the loop's checkpoint saves and restores")
            gen = stream_generator(state.config.seed, "probe_set", world.device)
            store["probe_set"] = make_probe_set(world, self.cfg.users_per_cohort, gen).state_dict()
        return ProbeSet.from_state(store["probe_set"], world.device)

    def measure(self, step: int, state) -> list[Measurement]:
        """Every enabled probe of the state at ``step`` as (metric, group, value) triples."""
        cfg, world = self.cfg, state.world
        probe = self.probe_set(step, state)
        groups = state.groups()
        temperature = state.config.serving_temperature
        out: list[Measurement] = []
        with torch.no_grad():
            scores_t = score_probes(state.policy, probe, world, cfg.batch_size)  # (P, C)
            if cfg.auc:
                out += measure_auc(world, probe, scores_t, cfg.noise_free)
            if cfg.target:
                target = measure_target(world, probe, scores_t, groups, temperature,
                                        cfg.slate_samples)
                baseline = step0_values(state.rows, "target/expected_clicks") if step else {
                    g: v for _, g, v in target}
                out += target + measure_gain_drop(target, baseline)
            if cfg.kl:
                scores_0 = score_probes(state.reference, probe, world, cfg.batch_size)
                out += measure_kl(probe, scores_0, scores_t, groups, world.cfg.slate_size,
                                  temperature, cfg.slate_samples)
            if cfg.feedback and step > 0 and state.log is not None:
                out += [(m, None, v) for m, v in feedback_metrics(state.log, world).items()]
            if cfg.drift:
                out += measure_drift(state.policy, state.reference, world.users.cohort)
        return out

    def __call__(self, step: int, state) -> list[dict]:
        rows = []
        for metric, group, value in self.measure(step, state):
            if not math.isnan(value):
                rows += state.rows_for(step, {metric: value}, group)
        return rows


def step0_values(rows: list[dict], metric: str) -> dict[str, float]:
    """``{group: value}`` of ``metric`` at step 0 in a run's rows (the Gain/Drop baseline)."""
    return {r["group"]: r["value"] for r in rows if r["metric"] == metric and r["step"] == 0}
