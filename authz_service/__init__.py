"""Multi-tenant authorization service for chat-bot agents."""

import os as _os

__version__ = "0.1.0"

# gRPC core's fork handlers stop and restart its threads around every fork() of
# a process where gRPC is running. With grpc.aio that can stall the process's
# open streams and crash the child before it execs (seen when the embedded
# PostgreSQL is started as its own system user: a fork that cannot use vfork).
# Nothing here forks without exec, so they are off unless the environment says
# otherwise. Read when grpc is first imported: this package sets it first.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
