# The image for the authz service, its migration Job and the connectors:
#   authz serve | authz migrate | authz-connector {telegram,slack,discord} --config FILE
#
#   docker build -t registry.example.com/authz-service:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#     --build-arg SOURCE=https://git.example.com/you/authz-service .
#
# The service in the image always needs AUTHZ_DATABASE_URL: the embedded PostgreSQL of
# `make run` (the `embedded` extra) is not installed. No pip, setuptools or wheel at run time.
# Deployment: docs/deploy.md (helm/authz-service).
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the locked dependencies, then the package (its build generates the gRPC code) ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# requirements.lock: the server and connectors extras, not `embedded` (make lock).
COPY requirements.lock .
RUN python -m venv /opt/authz \
 && /opt/authz/bin/pip install -r requirements.lock
COPY . .
# setup.py runs scripts/gen_proto.py (proto/ -> authz_service/gen/) with the generators
# pinned in pyproject.toml's [build-system] (in pip's isolated build env, not the venv).
# Then the installers leave the venv: nothing at run time can install code.
RUN /opt/authz/bin/pip install --no-deps '.[server,connectors]' \
 && /opt/authz/bin/python -m pip uninstall --yes pip setuptools wheel

# --- runtime: the venv only; no compilers, no installers ----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="authz-service" \
      org.opencontainers.image.description="Multi-tenant authorization service for chat-bot agents: pairing, allowlists, approvals, send policy." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# The base image's own pip, setuptools and wheel go too.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --system --gid 10001 authz \
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
