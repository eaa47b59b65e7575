"""Local stand-ins of the chat platforms, for tests, benchmarks and ``make demo``.

``hermes simulate qqbot`` and ``hermes simulate telegram`` run them; each speaks its
platform's documented protocol on 127.0.0.1 and can misbehave on purpose.
"""
