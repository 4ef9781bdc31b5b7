"""Secure aggregation (SecAgg+, Bell et al. 2020) as pure math and state objects: no Flower here.

- :mod:`.quantize` fixed-point encoding into Z_2^bits with headroom for n clients; range check of a sum
- :mod:`.masks` AES-256-CTR keystream -> mask words (computed through OpenSSL's GCM code for its vector AES)
- :mod:`.keys` X25519 + HKDF-SHA256 + ChaCha20-Poly1305 share transport bound to round, sender, receiver
- :mod:`.shamir` Shamir sharing over GF(2^521 - 1)
- :mod:`.identity` long-term Ed25519 site keys: signed round keys, the consistency round
- :mod:`.protocol` round parameters, graph, shared definitions; :mod:`.session` a client's round;
  :mod:`.server` the coordinator's round (robust reconstruction, range check)

The Flower plumbing is in ``client/secagg.py`` (client stages) and ``strategies/secagg.py`` (server stages);
docs/secure-aggregation.md has the threat model, parameters and costs.
"""
