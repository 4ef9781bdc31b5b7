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
    It sets Flower's process-wide ``TaskIdentity`` (needed to build messages outside a running app).
    """

    def __init__(self, client_app: Any, num_nodes: int, run_config: Mapping[str, Any] | None = None,
                 node_configs: Mapping[int, Mapping[str, Any]] | None = None,
                 drop: Callable[[str, int], bool] | None = None, first_node_id: int = 101,
                 vanish: Callable[[str, int], bool] | None = None,
                 names: Mapping[int, str] | None = None) -> None:
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
        self.sent: list[Message] = []  # every instruction, for tests that inspect traffic
        self.received: list[Message] = []  # every reply
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

    def push_messages(self, messages):  # type: ignore[override]
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def pull_messages(self, message_ids):  # type: ignore[override]
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            self._counter += 1
            msg.metadata.__dict__["_message_id"] = f"m{self._counter}"
            self.sent.append(msg)
            node = int(msg.metadata.dst_node_id)
            if self.drop(msg.metadata.message_type, node):
                continue
            if self.vanish(msg.metadata.message_type, node):
                from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

                reply = create_message_error_unavailable_res_message(msg.metadata, "node_unavail")
                self.received.append(reply)
                replies.append(reply)
                continue
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - as Flower's runtime does: a site's exception is an error reply
                reply = Message(Error(code=CLIENT_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self.received.append(reply)
            replies.append(reply)
        return replies
