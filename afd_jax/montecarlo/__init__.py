"""Monte Carlo layer: one spine (``samplers`` factory, ``estimators``, the ``result`` type,
the ``spine`` chunk loop) shared by the steps-window driver (``simulate``) and the finite-pool
completions-window driver (``pool``); the kernels behind one contract live in
``afd_jax.kernels`` (docs/simulation.md)."""
