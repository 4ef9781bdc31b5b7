"""What makes a site's training private, and what it costs: privacy units and their secret Poisson sampling
(:mod:`.units`), the DP-compatible objective and what a DP step is given (:mod:`.dp`), client-level DP
(:mod:`.client_dp`), the site's ledger and accountant (:mod:`.ledger`), the reservation before a round
(:mod:`.reservation`) and the privacy side of one round (:mod:`.private_round`). The DP-SGD step itself is
:class:`xr0_core.train.stepper.DPStep`."""
