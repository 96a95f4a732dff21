# First, before anything loads grpc: the package turns gRPC's fork handlers off
# (see authz_service/__init__.py); the suite forks with gRPC running all the time.
import authz_service  # noqa: F401
