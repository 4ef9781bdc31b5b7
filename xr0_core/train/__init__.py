"""Local training at a site, framework- and privacy-free: the trainer (:mod:`.trainer`), how it steps
(:mod:`.stepper`: plain and DP-SGD; :mod:`.per_unit`: per-unit gradients; :mod:`.loop`: the shared step pieces),
its round state on disk (:mod:`.round_state`), data parallelism (:mod:`.distributed`, :mod:`.dp_ranks`) and the
SSL health probe (:mod:`.health`). Whether a round is private, and with what noise, is decided above it
(:mod:`xr0_core.privacy`, composed by :mod:`xr0_core.site.round`)."""
