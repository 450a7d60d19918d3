"""The ``hostbus`` commands, one module per command group.

- ``common``: exit codes, ``CliError``, the CLI context (configuration and the console,
  made by an injectable factory) and output helpers; ``options``: shared options;
  ``targeting``: which hosts a command acts on.
- ``discovery`` (agents, ping), ``fleet`` (inventory, facts), ``calls`` (call, query),
  ``watch``, ``subscriptions``, ``schema``, ``broker``, ``provision`` (provisioner,
  provision ...), ``approvals``, ``keys``, ``policy``, ``completion`` (and the
  completers), ``manpage``.

A new command goes into its group's module and its name into ``console.cli.COMMANDS``.
Commands return their exit code and raise ``CliError`` (or let a ``HostbusError`` through)
to stop; they never exit the process themselves.
"""
