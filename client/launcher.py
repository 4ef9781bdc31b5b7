"""The hospital's own ClientApp launcher: ``xr0 site clientapp`` (DESIGN D14; docs/deploy-hospital.md).

Flower's default SuperNode starts ``flwr-clientapp`` for every message, and that process unpacks the run's
app bundle (FAB) and imports the ClientApp *from the bundle*: the coordinator's code. A check of the
bundle's version run by that code proves nothing (the coordinator wrote it). So a hospital that approves
app versions runs its SuperNode in Flower's process isolation mode (``flower-supernode --isolation
process``: the SuperNode starts no ClientApp itself) and this launcher next to it, from the hospital's
reviewed install:

1. :func:`serve` asks the SuperNode's runtime API (``AcquireTask``) for ClientApp tasks and starts one
   process of its own per task (``python -m client.launcher``, the token in its environment), as Flower's
   SuperExec would start ``flwr-clientapp``;
2. that process (:func:`run_task`) pulls the task's message, context and bundle through the ClientAppIo API
   (Flower's ``pull_task_input``), and :func:`answer` hashes the bundle's bytes in memory
   (:func:`xr0_core.deploy.appversion.fab_version`: every file and the entry-point mapping; nothing is
   unpacked or imported) and checks the version against the site policy's ``apps.allowed-versions``;
3. approved: the hospital's *installed* ClientApp (``client.app:app``) answers the message; refused: a
   reply with the reason (the coordinator's report shows it; the run goes on with the other hospitals),
   described in the audit log like any reply. Bundle code is never imported either way.

The policy is found from the node config the hospital gave its SuperNode (``state-dir``, ``policy``); the
run config (the coordinator's) plays no part in the check.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from flwr.app import Context, Message

from xr0_core.deploy.appversion import BundleError, fab_version
from xr0_core.site.policy import PolicyError, PolicyRefusal

log = logging.getLogger(__name__)

TOKEN_ENV = "XR0_CLIENTAPP_TOKEN"  # the task token travels in the child's environment, not on its command line
DEFAULT_RUNTIME_API = "127.0.0.1:9094"


class LauncherError(ValueError):
    """A launcher setting is wrong; the message says what to pass."""


@dataclass(frozen=True)
class RuntimeAPI:
    """Where and how to reach the SuperNode's runtime API.

    ``root_certificates`` is the CA of the runtime API's TLS certificate (``flower-supernode
    --ssl-certfile``); without it the API is spoken in plain HTTP, which only a loopback address allows.
    ``secret`` is the SuperExec shared secret (``--superexec-auth-secret-file`` on both sides): with it only
    a holder of the secret can acquire this node's tasks.
    """

    address: str = DEFAULT_RUNTIME_API
    root_certificates: bytes | None = None
    secret: bytes | None = None

    def __post_init__(self) -> None:
        host = self.address.rpartition(":")[0].strip("[]")
        if not host:
            raise LauncherError(f"--runtime-api-address {self.address!r}: give HOST:PORT, e.g. {DEFAULT_RUNTIME_API}")
        if self.root_certificates is None and not _loopback(host):
            raise LauncherError(f"--runtime-api-address {self.address}: a runtime API off this host needs TLS; pass "
                                "--root-certificates (the CA of the SuperNode's --ssl-certfile), or use 127.0.0.1")

    def client(self, component: str, token: str | None = None):
        """A Flower ``RuntimeHttpClient`` for this API (``token``: a task's; ``None``: the launcher's own)."""
        from flwr.supercore.interceptors import (RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor,
                                                 SuperExecAuthHttpInterceptor)
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        elif self.secret:
            interceptors.append(SuperExecAuthHttpInterceptor(
                master_secret=self.secret, protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
        return RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.root_certificates is None,
            root_certificates=self.root_certificates, interceptors=interceptors,
            retry_invoker=make_simple_http_retry_invoker())

    def child_args(self, cert_file: Path | None) -> list[str]:
        args = ["--runtime-api-address", self.address]
        return args + (["--root-certificates", str(cert_file)] if cert_file else [])


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- the check
def node_policy(node_config: Mapping[str, object]):
    """The site policy named by the SuperNode's node config (``state-dir``, ``policy``), read the way the
    ClientApp reads it (:meth:`client.site.Site.policy`: fails closed on a missing file after DP releases)."""
    from xr0_core.config import XR0Config

    from .site import resolve_site

    return resolve_site(node_config, XR0Config()).policy()


def check_task_bundle(fab: bytes, node_config: Mapping[str, object]) -> str:
    """The bundle's version, once the site policy approves it.

    Raises
    ------
    PolicyRefusal
        The version is not in ``apps.allowed-versions``, or the bytes are not a bundle a version can be
        computed for (the message says which).
    PolicyError, SiteConfigError
        The policy file or the node config is broken (the message names it).
    """
    from xr0_core.site.refusals import check_bundle

    try:
        version = fab_version(fab)
    except BundleError as exc:
        raise PolicyRefusal(f"site policy: the coordinator's app bundle cannot be checked ({exc})") from None
    check_bundle(node_policy(node_config), version)
    return version


def answer(message: Message, context: Context, fab: bytes,
           installed: Callable[[], Callable[..., Message]] | None = None) -> tuple[Message, bool]:
    """The reply to one task, and whether the hospital's ClientApp ran (False: refused).

    Parameters
    ----------
    fab : bytes
        The run's bundle as the SuperNode received it.
    installed : callable, optional
        Returns the ClientApp to run once the bundle is approved (default: the installed
        ``client.app:app``, imported only then).
    """
    from .approval import set_verified
    from .site import SiteConfigError

    try:
        version = check_task_bundle(fab, context.node_config)
    except (PolicyRefusal, PolicyError, SiteConfigError) as exc:
        log.warning("refused %s of run %s: %s", message.metadata.message_type, message.metadata.run_id, exc)
        return _refusal(message, context, exc), False
    set_verified(version)
    if installed is None:
        from .app import app

        client_app = app
    else:
        client_app = installed()
    return client_app(message=message, context=context), True


def _refusal(message: Message, context: Context, exc: Exception) -> Message:
    """The refusal as the ClientApp's own mods would reply it: an error reply with the reason (no local
    paths), described in the audit log."""
    from .audit import audit_mod
    from .errors import sanitize_errors_mod

    def refuse(_msg: Message, _ctx: Context) -> Message:
        raise exc

    return audit_mod(message, context, lambda m, c: sanitize_errors_mod(m, c, refuse))


# ---------------------------------------------------------------------------------------------- one task
def run_task(api: RuntimeAPI, token: str) -> int:
    """Answer one ClientApp task over the ClientAppIo API (pull, :func:`answer`, push). Exit code 0."""
    from flwr.common.constant import SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    client = api.client("flwr-clientapp", token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context = None
    status, details = SubStatus.FAILED, "the hospital's ClientApp failed before replying (see its log)"
    try:
        message, context, _run, fab = pull_task_input(client)
        try:
            reply, ran = answer(message, context, fab.content)
        except Exception as exc:  # noqa: BLE001 - e.g. a message type the app has no handler for: still a reply
            from flwr.app import Error

            from .errors import SITE_ERROR_CODE, reply_reason

            log.exception("the hospital's ClientApp failed on %s", message.metadata.message_type)
            reason = reply_reason(exc, message.metadata.message_type, private=True)  # the fixed categories
            reply, ran = Message(Error(code=SITE_ERROR_CODE, reason=reason), reply_to=message), False
        push_message(client, reply, context)
        status, details = (SubStatus.COMPLETED, "") if ran else (SubStatus.FAILED, "refused by the site policy")
        return 0
    finally:
        push_task_output(client=client, context=context, sub_status=status, details=details)
        heartbeat.stop()
        client.close()


# ---------------------------------------------------------------------------------------------- the loop
def serve(api: RuntimeAPI, *, cert_file: Path | None = None, poll: float = 1.0,
          stop: threading.Event | None = None) -> int:
    """Acquire this SuperNode's ClientApp tasks and start one process per task until ``stop`` is set (or the
    process is interrupted). Returns 0."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    stop = stop or threading.Event()
    client = api.client("SuperExec")
    children: list[subprocess.Popen] = []
    log.info("xr0 site clientapp: waiting for ClientApp tasks from the SuperNode at %s", api.address)
    try:
        while not stop.is_set():
            children = [c for c in children if c.poll() is None]
            try:
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            except Exception as exc:  # noqa: BLE001 - the SuperNode may be restarting: keep asking
                if getattr(getattr(exc, "response", None), "status_code", None) == 401:
                    log.error("the SuperNode at %s refuses this launcher's secret: give flower-supernode and "
                              "`xr0 site clientapp` the same --superexec-auth-secret-file", api.address)
                else:
                    log.warning("cannot reach the SuperNode's runtime API at %s: %s", api.address, exc)
                stop.wait(max(poll, 2.0))
                continue
            if res.HasField("task") and res.token:
                children.append(_start_child(api, res.token, cert_file))
                log.info("task %s of run %s: started the hospital's ClientApp (pid %d)", res.task.task_id,
                         res.task.run_id, children[-1].pid)
                continue  # another task may be waiting already
            stop.wait(poll)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
        for child in children:  # a task whose launcher stops is not left running
            if child.poll() is None:
                child.terminate()
    return 0


def _start_child(api: RuntimeAPI, token: str, cert_file: Path | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "client.launcher", *api.child_args(cert_file), "--parent-pid", str(os.getpid())]
    return subprocess.Popen(cmd, env={**os.environ, TOKEN_ENV: token})


def main(argv: list[str] | None = None) -> int:
    """``python -m client.launcher``: one task (the launcher's child; token in ``$XR0_CLIENTAPP_TOKEN``)."""
    parser = argparse.ArgumentParser(prog="python -m client.launcher", description=main.__doc__)
    parser.add_argument("--runtime-api-address", default=DEFAULT_RUNTIME_API)
    parser.add_argument("--root-certificates", type=Path, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        parser.error(f"no task token in ${TOKEN_ENV}: this process is started by `xr0 site clientapp`")
    if args.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    certs = args.root_certificates.read_bytes() if args.root_certificates else None
    return run_task(RuntimeAPI(args.runtime_api_address, certs), token)


if __name__ == "__main__":
    sys.exit(main())
