"""The ``authz`` command line, on click.

- ``main``: the root command, and the one place errors become messages and exit codes
  (``errors.outcome``);
- ``session``: address, API key, TLS and ``--json``, click's context object;
- ``output``: tables, JSON, timestamps and enum labels (from ``authz_service.names``);
- ``durations``: the one duration grammar;
- one module per noun: ``tenant``, ``key``, ``channel``, ``pairing``, ``approvals``,
  ``users``, ``group``, ``invites``, ``approvers`` (and ``timezone``), ``audit``,
  ``simulate``, ``doctor``, ``apply`` (and ``export``; the file is read by ``schema`` and
  ``policyfile``, compared and written by ``plan``);
- ``server``: ``serve``, ``dev`` and ``migrate``, the only commands that load the service.
"""
