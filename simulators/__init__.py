"""The simulated user environment: pure tensors in, tensors out; knows nothing of models.

Start with :func:`simulators.world.make_world` on a config from :mod:`simulators.presets`, then
call :func:`simulators.day.simulate_day` with any slate policy, once per simulated day.
Ground truth (true click probabilities, the oracle slate) is in :mod:`simulators.ground_truth`,
Parquet logs in :mod:`simulators.logs`.
"""
