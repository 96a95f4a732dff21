# The image for the authz service, its migration Job and the connectors:
#   authz serve | authz migrate | authz-connector {telegram,slack,discord} --config FILE
#
#   docker build -t registry.example.com/authz-service:0.1.0 .
#
# Deployment: docs/deploy.md (helm/authz-service).
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: generate the gRPC code (not committed) and install the package into a venv -----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The code generators `make proto` uses (pinned as in pyproject.toml's dev extra).
RUN pip install grpcio-tools==1.85.1 mypy-protobuf==5.1.0
COPY . .
# Same as `make proto`: proto/ -> authz_service/gen/.
RUN python scripts/gen_proto.py
RUN python -m venv /opt/authz \
 && /opt/authz/bin/pip install '.[connectors]'

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 authz \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/authz --create-home \
        --shell /usr/sbin/nologin authz
COPY --from=build /opt/authz /opt/authz
ENV PATH=/opt/authz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUTHZ_LISTEN=0.0.0.0:50051 \
    AUTHZ_HOME=/home/authz/.authz
USER 10001:10001
WORKDIR /home/authz
EXPOSE 50051
CMD ["authz", "serve"]
