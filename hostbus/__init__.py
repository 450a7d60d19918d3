"""hostbus core: envelope, codec, schemas, transports, config and errors.

Nothing in this package talks to a host; agents and consoles are built on it.
"""

__version__ = "0.1.0"
