# The image for the authz service, its migration Job and the connectors:
#   authz serve | authz migrate | authz-connector {telegram,slack,discord} --config FILE
#
#   docker build -t registry.example.com/authz-service:0.1.0 .
#
# Deployment: docs/deploy.md (helm/authz-service).
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the locked dependencies, then the package (its build generates the gRPC code) ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements.lock .
RUN python -m venv /opt/authz \
 && /opt/authz/bin/pip install -r requirements.lock
COPY . .
# setup.py runs scripts/gen_proto.py (proto/ -> authz_service/gen/) with the generators
# pinned in pyproject.toml's [build-system].
RUN /opt/authz/bin/pip install --no-deps '.[server,connectors]'

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
