"""The methods ``lohp evaluate`` compares: each turns shared starting points into weights.

``base``          the :class:`~lohp_cli.methods.base.Method` protocol, the evaluation context and
                  the scoring/timing loop every method goes through (one report row each).
``policy``        a trained policy directory (any weight generator; ``NAME@S``: a diffusion
                  policy at S DDIM steps), and the generated store's own weights.
``hypernetwork``  the hypernetwork baseline, trained here through :mod:`lohp_cli.policy.fit`.
``optimizer``     SGD/Adam/SAM for a step budget.
``memorization``  nearest, mean, nearest-noise, class-rows, gaussian, average-16: weights looked
                  up in the source endpoints, never trained.
``meta_start``    reptile, fomaml: a θ₀ meta-learned on the store's source tasks, then Adam.
``erm``           DomainBed's ERM for domain families: Adam on a task's pooled source domains.
``prototype``     the nearest-class-mean classifier as the ``head`` model's linear weights
                  (registers itself; imported here, so every user of the package has it).
``registry``      baseline names → factories; plug-ins (the learned optimizers in
                  :mod:`lohp_cli.l2o.method`) register themselves when the stage imports them.
"""

import lohp_cli.methods.prototype  # noqa: F401 - registers the prototype baseline
