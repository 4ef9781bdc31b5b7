"""Names shared by the client and server stages (message actions, record and metric keys).

Message types are ``<category>.<action>`` as Flower's ClientApp routes them: ``query.secagg_setup`` goes to
``@app.query("secagg_setup")`` (actions must be Python identifiers), ``train.secagg`` to ``@app.train("secagg")``.
"""

SETUP = "secagg_setup"  # query action: fresh key pairs -> public keys
SHARE_KEYS = "secagg_share_keys"  # query action: neighbours' keys -> encrypted shares
TRAIN_ACTION = "secagg"  # train action: train + masked upload
UNMASK = "secagg_unmask"  # query action: alive / dropped -> shares

REC = "secagg"  # ConfigRecord with the stage's protocol fields (both directions)
MASKED = "secagg-masked"  # ArrayRecord holding the masked upload as one uint array "words"
WORDS = "words"
CLIPPED = "secagg-clipped"  # metric: coordinates clipped to the declared range
WEIGHT_CAPPED = "secagg-weight-capped"  # metric: 1 when num-examples exceeded secagg.weight-cap
