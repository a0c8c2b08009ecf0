"""Runnable models shipped with ascend_jax (installed as the package ``ascend_jax_models``).

Each ``NAME.py`` defines ``build(seed: int = 0)`` (and optionally ``expected(program)``); each
``NAME.toml`` is a scenario. ``ascend-jax models`` lists them; ``ascend-jax run --model NAME`` runs one.
"""
