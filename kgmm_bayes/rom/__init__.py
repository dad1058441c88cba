"""The reduced-order model: the score interpolant (:mod:`.interpolant`), the Langevin integrator
(:mod:`.langevin`) and the posterior ensemble of models (:mod:`.ensemble`)."""
