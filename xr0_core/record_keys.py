"""Record and metric keys shared by client, server and strategies (one place, no string typos).

Flower messages carry a ``RecordDict``; these are the names of its records and of the entries inside.
"""

# RecordDict entries
ARRAYS = "arrays"  # ArrayRecord: the shared parameter set (floating point only)
CONFIG = "config"  # ConfigRecord: the round's instructions
METRICS = "metrics"  # MetricRecord: scalar metrics of a reply

# ConfigRecord keys sent by the server
SERVER_ROUND = "server-round"  # injected by Flower's strategies
GLOBAL_STEP = "global-step"  # first global SSL step of this round (schedules continue across rounds)
TOTAL_STEPS = "total-steps"  # schedule length: rounds x local steps
LOCAL_STEPS = "local-steps"
RUN_SEED = "run-seed"
CONFIG_HASH = "config-hash"

# MetricRecord keys sent by a client (scalars only)
NUM_EXAMPLES = "num-examples"  # Flower's weighting key

# The round's preflight (query.preflight): the coordinator asks, before any set-up or training, whether each
# hospital will take part; the ConfigRecord PREFLIGHT says whether the round is secure, a ready reply's
# MetricRecord holds READY = 1 (a refusal is an error reply with the hospital's reason).
PREFLIGHT = "preflight"
SECURE = "secure"
READY = "ready"
