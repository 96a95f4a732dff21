"""Connector sidecars: one small process per chat platform (Telegram, Slack, Discord).

``runtime`` holds the shared flow, ``config`` the configuration, ``http`` the
local send endpoint and ``main`` the ``authz-connector`` command; each platform
package only adapts its library to ``runtime.Transport``. See docs/connectors.md.
"""

import authz_service  # noqa: F401  (first: its gRPC fork setting applies before grpc loads)
