"""The job runner: routes for inbound messages, scheduled jobs, their runs and the outbox.

- :mod:`.handlers`: route and action settings, route matching, running a handler;
- :mod:`.schedule`: scheduled jobs on APScheduler's SQLAlchemy job store;
- :mod:`.ledger`: the SQL side of runs and outgoing messages (``job_runs``, ``outbox``);
- :mod:`.runs`: the runner that starts, times and records every run;
- :mod:`.outbox`: delivery of outgoing messages through the adapters;
- :mod:`.cli`: ``hermes jobs``.
"""
