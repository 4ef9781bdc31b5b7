"""What belongs to one hospital: its policy (what it allows), its identity and state folder, and the
composition of its federated round (policy check, training, privacy session, ledger, what leaves)."""
