"""Deployment helpers that need no Flower import: credentials (``certs``), the runbook commands
(``runbook``), the hospital preflight (``doctor``) and the app version a site approves (``appversion``)."""
