"""``make bench-peers``: checks per core of Cerbos, our remote CheckUser and our
edge check, side by side in one run (issue #21). Not part of CI.

* **Cerbos** (a Go policy decision point, no database) from its npm package
  ``@cerbos/cerbos-linux-x64`` (``CERBOS_VERSION``, default below), installed
  into ``.bench-peers/`` (git-ignored) on first use. Its policy is the
  equivalent of our channel: a resource policy on ``channel`` whose ``message``
  action is allowed when the principal's id is in the channel's allowlist (the
  bench's 1,000 users, written into the policy's condition, since Cerbos holds
  no data of its own). It runs with ``GOMAXPROCS=1``, pinned to the server core.
* **Remote CheckUser**: the bench server (cached path), pinned to the same core.
* **Edge check**: repeat CheckUser answered by the SDK's edge cache, in this
  process (``bench.edge.edge_calls_per_core``).

"Per core" is calls per CPU second of the process that answers them (the
server's for Cerbos and CheckUser, measured with psutil; the caller's for the
edge), so a load generator that cannot saturate a server does not flatter or
hurt anyone. The three take turns, ``--rounds`` times; the median counts.
Cerbos is called over gRPC with its own request message, built from its server
reflection (no copy of its protos here).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from . import edge as edge_bench
from .dataset import MAIN_TENANT, user_name
from .load import Call, Load, percentile
from .report import log
from .scenarios import Bench, Options, Run
from .server import BenchServer, free_port

CERBOS_VERSION = os.environ.get("CERBOS_VERSION", "0.55.0")
CERBOS_PACKAGE = "@cerbos/cerbos-linux-x64"
PEERS_DIR = Path(".bench-peers")
CHECK = "/cerbos.svc.v1.CerbosService/CheckResources"


def cerbos_binary() -> Path:
    """The Cerbos binary from npm, installed into ``.bench-peers/`` if missing."""
    binary = PEERS_DIR / "node_modules" / CERBOS_PACKAGE / "cerbos-linux-x64"
    if binary.exists():
        return binary
    if shutil.which("npm") is None:
        raise SystemExit("bench-peers needs npm (apt-get install npm) to install Cerbos")
    log(f"installing {CERBOS_PACKAGE}@{CERBOS_VERSION} into {PEERS_DIR}/")
    PEERS_DIR.mkdir(exist_ok=True)
    subprocess.run(
        ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(PEERS_DIR),
         f"{CERBOS_PACKAGE}@{CERBOS_VERSION}"],
        check=True,
    )  # fmt: skip
    if not binary.exists():
        raise SystemExit(f"the npm package did not hold {binary}")
    return binary


def write_policy(directory: Path, users: int) -> None:
    allowlist = ", ".join(f'"{user_name(u)}"' for u in range(users))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "channel.yaml").write_text(
        "apiVersion: api.cerbos.dev/v1\n"
        "resourcePolicy:\n"
        "  version: default\n"
        "  resource: channel\n"
        "  rules:\n"
        '    - actions: ["message"]\n'
        "      effect: EFFECT_ALLOW\n"
        '      roles: ["*"]\n'
        "      condition:\n"
        "        match:\n"
        f"          expr: request.principal.id in [{allowlist}]\n"
    )


class Cerbos:
    def __init__(self, binary: Path, home: Path, users: int, cpus: list[int] | None) -> None:
        policies = home / "cerbos-policies"
        write_policy(policies, users)
        self.address = f"127.0.0.1:{free_port()}"
        config = home / "cerbos.yaml"
        config.write_text(
            f'server:\n  httpListenAddr: "127.0.0.1:{free_port()}"\n  grpcListenAddr: "{self.address}"\n'
            f"storage:\n  driver: disk\n  disk:\n    directory: {policies}\n    watchForChanges: false\n"
            "telemetry:\n  disabled: true\n"
        )
        env = {**os.environ, "GOMAXPROCS": "1"}
        with open(home / "cerbos.log", "ab") as out:
            self.process = subprocess.Popen(
                [str(binary.resolve()), "server", f"--config={config}", "--log-level=error"],
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
            )
        self.request, self.response = self._messages()

    def _messages(self) -> tuple[Any, Any]:
        """Cerbos' request and response classes, from its server reflection."""
        deadline = time.monotonic() + 30
        while True:
            try:
                with grpc.insecure_channel(self.address) as channel:
                    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
                    request = message_factory.GetMessageClass(
                        pool.FindMessageTypeByName("cerbos.request.v1.CheckResourcesRequest")
                    )
                    response = message_factory.GetMessageClass(
                        pool.FindMessageTypeByName("cerbos.response.v1.CheckResourcesResponse")
                    )
                    return request, response
            except (grpc.RpcError, KeyError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Cerbos did not start; see cerbos.log in the bench's home") from None
                time.sleep(0.2)

    def calls(self, users: int) -> tuple[Call, ...]:
        out = []
        for u in range(users):
            r = self.request(request_id="1")
            r.principal.id, r.principal.policy_version = user_name(u), "default"
            r.principal.roles.append("user")
            entry = r.resources.add()
            entry.actions.append("message")
            entry.resource.kind, entry.resource.id, entry.resource.policy_version = "channel", "tg", "default"
            out.append(Call(CHECK, r.SerializeToString(), ()))
        return tuple(out)

    def preflight(self, calls: tuple[Call, ...]) -> None:
        with grpc.insecure_channel(self.address) as channel:
            check = channel.unary_unary(CHECK, None, None)
            effect = (
                self.response.FromString(check(calls[0].request, timeout=10)).results[0].actions["message"]
            )
            if effect != 1:  # EFFECT_ALLOW
                raise RuntimeError(f"Cerbos does not allow an allowlisted user (effect {effect})")
            stranger = self.request.FromString(calls[0].request)
            stranger.principal.id = "stranger"
            effect = self.response.FromString(check(stranger.SerializeToString(), timeout=10)).results[0]
            if effect.actions["message"] != 2:  # EFFECT_DENY
                raise RuntimeError("Cerbos allows a user outside the allowlist")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)


def per_core(bench: Bench, name: str, load: Load, pids: Any) -> float:
    m = bench.run_once(Run((name,), load, pids, bench.client_cpus))
    server = m.cpu.server if m.cpu is not None else 0.0
    return m.result.rps / server if server > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="turns of each (default 3)")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per turn (default 4)")
    p.add_argument("--users", type=int, default=1000, help="allowlisted users (default 1000)")
    a = p.parse_args(argv)
    opts = Options(
        duration=a.duration, warmup=1.0, processes=2, concurrency=32, connections=8, scale_tenants=1,
        users=a.users, skip_scale=True, skip_workers=True, keep=False, report=Path("/dev/null"), quick=False,
    )  # fmt: skip
    binary = cerbos_binary()
    bench = Bench(opts)
    atexit.register(shutil.rmtree, bench.home, True)
    bench.start_database()
    bench.load_small()
    assert bench.spec is not None
    server = BenchServer(bench.spec)
    cerbos = Cerbos(binary, bench.home, a.users, bench.server_cpus)
    try:
        key = bench.data.connector_keys[MAIN_TENANT]
        users = [(MAIN_TENANT, user_name(u)) for u in range(a.users)]
        ours = bench.check_user(users, False)
        theirs = cerbos.calls(a.users)
        cerbos.preflight(theirs)
        figures: dict[str, list[float]] = {"cerbos": [], "checkuser_remote": [], "edge": []}
        for i in range(a.rounds):
            log(f"round {i + 1} of {a.rounds}")
            figures["cerbos"].append(
                per_core(bench, "cerbos", bench.load(cerbos.address, theirs), lambda: [cerbos.process.pid])
            )
            figures["checkuser_remote"].append(
                per_core(bench, "checkuser_remote", bench.load(server.address, ours), server.pids)
            )
            figures["edge"].append(
                asyncio.run(edge_bench.edge_calls_per_core(server.address, key, a.users, a.duration))
            )
            log("  per core: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in figures.items()))
    finally:
        cerbos.stop()
        server.stop()
    medians = {k: percentile(v, 0.5) for k, v in figures.items()}
    print(f"bench peers_cerbos_checks_per_core {medians['cerbos']:.0f} checks/s", flush=True)
    print(f"bench peers_checkuser_remote_per_core {medians['checkuser_remote']:.0f} checks/s", flush=True)
    print(f"bench peers_edge_check_per_core {medians['edge']:.0f} checks/s", flush=True)
    print(f"ratio peers_checkuser_remote_vs_cerbos {medians['checkuser_remote'] / medians['cerbos']:.2f}")
    print(f"ratio peers_edge_vs_cerbos {medians['edge'] / medians['cerbos']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
