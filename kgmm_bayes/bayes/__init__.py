"""The Bayesian mixture: its likelihood and priors (:mod:`.mixture`), NUTS (:mod:`.sampler`), the
coarsened posterior (:mod:`.coarsening`), scores of the draws and their bands (:mod:`.score`),
diagnostics (:mod:`.diagnostics`) and the choice of the number of components (:mod:`.selection`)."""
