"""The inbox: every inbound event stored before a route sees it, with the adapter's cursor.

- :mod:`.schema`: the ``inbox`` and ``inbound_cursors`` tables (migration 0003);
- :mod:`.store`: their SQL (group commits, backlog, skips, retention);
- :mod:`.intake`: the path from an adapter's ``offer`` to a committed row, with
  backpressure and the gateway's holds.
"""
