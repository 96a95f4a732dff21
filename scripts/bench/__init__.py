"""``make bench``: a reproducible benchmark of the service on this machine.

What it does (docs/performance.md explains the method and the latest figures):

1. starts the embedded PostgreSQL in a temporary AUTHZ_HOME and migrates it
   (``scenarios``);
2. loads a data set as the schema owner, with COPY: one tenant with 1,000
   allowlisted users (the small run), later 999 more tenants with 1,000 users
   each (1,000,000 subjects, the scale run) (``dataset``);
3. runs the real server (``start_server``) in its own process pinned to one
   core, plus a bench-only ``authz.bench.Bench/Empty`` method declared with
   the same ``@rpc`` decorator as CheckUser (authentication, role check,
   trace id, error mapping): the empty RPC is the physical limit of this
   server stack, and every figure is compared with it (``server``);
4. drives it with multi-process grpc.aio clients pinned to the other core(s):
   pre-serialised requests (``calls``), raw-bytes calls, many calls in flight;
   scenarios that are compared take turns of a second in one run
   (``load.Schedule``), so a host whose speed drifts cannot skew their ratios
   (``load``);
5. accounts for the CPU of every party over each window (server, PostgreSQL,
   clients, foreign processes) with psutil, samples the service's database
   connections, and repeats a run that another workload disturbed (``host``,
   ``scenarios``);
6. prints ``bench <name> <value> <unit>`` and ``ratio <name> <value>`` lines on
   stdout, progress on stderr, and writes a JSON report (``--report``)
   (``report``).

Only the virtualenv is needed. Usage, from ``scripts/`` (``make bench`` does
this)::

    ../.venv/bin/python -m bench [--quick] [--duration S] [--skip-scale] [--skip-workers] [--report PATH]
"""
