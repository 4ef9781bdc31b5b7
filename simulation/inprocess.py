"""An in-process Grid for tests and benchmarks: every node's ClientApp runs in this process, in order.

It is a test double (it writes Flower internals: the process-wide ``TaskIdentity`` and message ids), so it
lives here in the top layer, not beside the strategies it drives. Used by the secure-aggregation and
coordinator tests and by ``bench/secagg.py``: the same messages, handlers and mods as a real run, without Ray
or a SuperLink.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

CLIENT_EXCEPTION = 1  # error code of a reply whose handler raised (Flower's runtime does the same)


class InProcessGrid(Grid):
    """A Grid that runs a ClientApp for each of ``num_nodes`` nodes in this process, in order.

    For tests and ``bench/secagg.py``: the same messages, handlers and mods as a real run, without Ray or a
    SuperLink. ``drop(stage_message_type, node) -> bool`` makes a node silent for a message (a dropout);
    ``vanish(stage_message_type, node) -> bool`` makes it die instead: the SuperLink's own ``NODE_UNAVAILABLE``
    error answers in its place (built by Flower's function, ``src_node_id`` = the SuperLink's id). ``names``
    (node index -> name) plays the SuperLink's registry of admitted names (``get_nodes``).
    ``push_messages`` / ``pull_messages`` work as on a SuperLink (a pushed message runs when its reply is
    pulled; ``pull_batch = 1``: one reply per pull, as hospitals finishing one after another), so a caller
    that consumes replies as they arrive (``strategies/secagg.py``'s masked uploads) can be exercised here.
    It sets Flower's process-wide ``TaskIdentity`` (needed to build messages outside a running app).
    """

    def __init__(self, client_app: Any, num_nodes: int, run_config: Mapping[str, Any] | None = None,
                 node_configs: Mapping[int, Mapping[str, Any]] | None = None,
                 drop: Callable[[str, int], bool] | None = None, first_node_id: int = 101,
                 vanish: Callable[[str, int], bool] | None = None,
                 names: Mapping[int, str] | None = None, pull_batch: int | None = None,
                 keep: bool = True) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.app = client_app
        self.drop = drop or (lambda _t, _n: False)
        self.vanish = vanish or (lambda _t, _n: False)
        self.node_ids = [first_node_id + 13 * i for i in range(num_nodes)]
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config=dict((node_configs or {}).get(i, {})),
                       state=RecordDict(), run_config=dict(run_config or {}))
            for i, n in enumerate(self.node_ids)
        }
        self.names = dict(names or {})  # node index -> admitted name (what a SuperLink's registry holds)
        self.sent: list[Message] = []  # every instruction, for tests that inspect traffic (when keep)
        self.received: list[Message] = []  # every reply (when keep)
        self.keep = keep  # False: hold no message after it was answered (benchmarks measuring peak memory)
        self.pull_batch = pull_batch  # replies per pull_messages call; None: every pending one
        self._pushed: dict[str, Message] = {}  # pushed, not yet run (insertion order = push order)
        self._counter = 0

    def set_run(self, run):  # type: ignore[override]
        self._run = run

    @property
    def run(self):  # type: ignore[override]
        return getattr(self, "_run", None)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[override]
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def get_nodes(self):
        """The registry's view of the nodes (as the deployment Grid's ``get_nodes``): id and admitted name."""
        from flwr.proto.node_pb2 import NodeInfo

        return [NodeInfo(node_id=n, name=self.names[i]) if i in self.names else NodeInfo(node_id=n)
                for i, n in enumerate(self.node_ids)]

    answers_immediately = True  # a pull runs the messages it answers: one that gets no reply never will

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Queue messages as a SuperLink would; they run when :meth:`pull_messages` asks for their replies."""
        ids = []
        for msg in messages:
            self._counter += 1
            msg.metadata.__dict__["_message_id"] = f"m{self._counter}"
            if self.keep:
                self.sent.append(msg)
            self._pushed[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Replies to pushed messages among ``message_ids``: runs them in push order until ``pull_batch`` replies
        (all when None), so ``pull_batch = 1`` plays hospitals whose replies arrive one at a time. A dropped
        node's message is consumed without a reply (it stays silent); an empty list means nothing is left."""
        wanted = set(message_ids)
        replies = []
        for msg_id in [i for i in self._pushed if i in wanted]:
            if self.pull_batch is not None and len(replies) >= self.pull_batch:
                break
            reply = self._deliver(self._pushed.pop(msg_id))
            if reply is not None:
                replies.append(reply)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        ids = self.push_messages(messages)
        replies: list[Message] = []
        while any(i in self._pushed for i in ids):
            replies.extend(self.pull_messages(ids))
        return replies

    def _deliver(self, msg: Message) -> Message | None:
        """Run ``msg`` at its node: its reply, an error reply, or None for a node told to stay silent."""
        node = int(msg.metadata.dst_node_id)
        if self.drop(msg.metadata.message_type, node):
            return None
        if self.vanish(msg.metadata.message_type, node):
            from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

            reply = create_message_error_unavailable_res_message(msg.metadata, "node_unavail")
        else:
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - as Flower's runtime does: a site's exception is an error reply
                reply = Message(Error(code=CLIENT_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
        if self.keep:
            self.received.append(reply)
        return reply
