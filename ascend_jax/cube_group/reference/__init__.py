"""Sequential reference interpreter: the oracle the JAX engine is tested against.

Plain Python and numpy, one core action at a time, written from the spec and sharing no code with
the JAX engine. By stage:

* :mod:`~ascend_jax.cube_group.reference.protocol`: every core's protocol state and what one
  action does (AIV AllocMessage / PostMessage / Wait / SetQuit, GroupBarrier, SyncAll, the MTE3
  flag; AIC receive, callback dispatch, FreeMessage, SetSkipMsg, release).
* :mod:`~ascend_jax.cube_group.reference.interpreter`: :class:`ReferenceInterpreter`, the
  scheduler (``lockstep``, ``random``, ``timed``) and the run loop; :func:`run_reference`.
* :mod:`~ascend_jax.cube_group.reference.compute`: matmuls and vector ops in numpy; every GM
  read and write of a run goes through its ``read_tile`` / ``write_tile``.
* :mod:`~ascend_jax.cube_group.reference.timed`: the ``timed`` schedule's costs and clocks.
* :mod:`~ascend_jax.cube_group.reference.events`: trace events recorded during a run.
* :mod:`~ascend_jax.cube_group.reference.outcome`: the result, deadlock witness included.

The engine-independent pieces both engines share (the result, its witness and error entries) live
in :mod:`ascend_jax.cube_group.result`. Points where a run can be watched: every core action goes
through ``Protocol.aiv_act`` / ``Protocol.dispatch``, every GM access through
``compute.read_tile`` / ``compute.write_tile``.
"""

from ascend_jax.cube_group.reference.interpreter import ReferenceInterpreter, run_reference

__all__ = ["ReferenceInterpreter", "run_reference"]
