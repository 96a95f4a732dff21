"""`python -m authz_service.healthcheck [ADDRESS] [--service NAME]`: one gRPC health check.

Kubernetes' native gRPC probes speak plaintext only; with TLS on, the chart's probes and its
`helm test` Pod run this instead. It reads the same AUTHZ_ADDRESS and TLS variables as the
CLI (AUTHZ_CA_FILE, AUTHZ_CLIENT_CERT_FILE / AUTHZ_CLIENT_KEY_FILE) and needs no API key.
Exit 0 when the service answers SERVING, 1 otherwise, with one line saying why.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .client import TlsConfig


def check(address: str, service: str, tls: TlsConfig | None, timeout: float) -> str:
    """The status name the service reports for ``service`` ("" is the overall status)."""
    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, tls.credentials())
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m authz_service.healthcheck", description=__doc__)
    parser.add_argument("address", nargs="?", default=os.environ.get("AUTHZ_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--service", default="", help='health name: "" (readiness) or "liveness"')
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds")
    args = parser.parse_args(argv)
    try:
        status = check(args.address, args.service, TlsConfig.from_env(os.environ), args.timeout)
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        why = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) else type(exc).__name__
        print(f"healthcheck: {args.address}: {why}", file=sys.stderr)
        return 1
    print(f"{args.address} {args.service or '(overall)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
