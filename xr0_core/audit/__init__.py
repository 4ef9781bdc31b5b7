"""Empirical privacy audits of a released backbone at one hospital: membership inference with patients as the
unit (:mod:`.scores`, :mod:`.calibrate`, :mod:`.stats`), the one-run canary audit (:mod:`.canaries`,
:mod:`.one_run`) and the audit itself (:mod:`.run`). docs/privacy.md, "Measuring what an attacker learns"."""
