"""The ``gandalf`` command: the services in one or several processes, ``gandalf up``
with its embedded NATS, PostgreSQL and Valkey, and the billing tools. Depends on
every service; nothing depends on it."""
