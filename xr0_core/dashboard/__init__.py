"""The live dashboard: a local web page that follows a federation (coordinator) or one hospital's state
folder from the files they already write. It only reads; nothing here can change a run or a site.

- :mod:`.jsonsafe`: what may go to a browser (finite numbers, no NaN) and file change signatures;
- :mod:`.run_view`: a coordinator's run folder (``metrics.json``, ``events.jsonl``, ``run.json``,
  ``checkpoints/``) as one JSON-able state: progress and ETA, per hospital status with reasons, ε and budget,
  secure-aggregation participation, loss / ε / SSL-health series, evaluation verdicts, the config;
- :mod:`.site_view`: a hospital's state folder (privacy ledger, policy, audit log, refusals);
- :mod:`.app`: the Starlette application (page, state, server-sent events, bundled plotly.js), read-only;
- :mod:`.serve`: binding (127.0.0.1 by default, a token for any other address) and running it with uvicorn,
  in this process or as a child of ``xr0 simulate --dashboard``.

Layer: above ``report`` and ``site`` (it reads their functions), below ``cli``.
"""
