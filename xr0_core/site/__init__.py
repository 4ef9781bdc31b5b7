"""What belongs to one hospital: its policy (what it allows), its identity and state folder, the composition of
its federated round (policy check, trainer with the round's objective, DP step, ledger, what leaves:
:mod:`.round`), and the launcher of a round on several GPUs (:mod:`.launch`)."""
