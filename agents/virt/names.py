"""libvirt's numeric states, reasons and lifecycle events, as the words hostbus sends."""

STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
          5: "shutoff", 6: "crashed", 7: "pmsuspended"}

STATE_REASONS = {
    "running": ["unknown", "booted", "migrated", "restored", "from_snapshot", "unpaused",
                "migration_canceled", "save_canceled", "wakeup", "crashed", "postcopy"],
    "paused": ["unknown", "user", "migration", "save", "dump", "ioerror", "watchdog",
               "from_snapshot", "shutting_down", "snapshot", "crashed", "starting_up",
               "postcopy", "postcopy_failed"],
    "shutoff": ["unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                "from_snapshot", "daemon"],
    "shutdown": ["unknown", "user"],
    "crashed": ["unknown", "panicked"],
}

EVENTS = {0: "defined", 1: "undefined", 2: "started", 3: "suspended", 4: "resumed",
          5: "stopped", 6: "shutdown", 7: "pmsuspended", 8: "crashed"}

EVENT_DETAILS = {
    "defined": ["added", "updated", "renamed", "from_snapshot"],
    "undefined": ["removed", "renamed"],
    "started": ["booted", "migrated", "restored", "from_snapshot", "wakeup"],
    "suspended": ["paused", "migrated", "ioerror", "watchdog", "restored", "from_snapshot",
                  "api_error", "postcopy", "postcopy_failed"],
    "resumed": ["unpaused", "migrated", "from_snapshot", "postcopy"],
    "stopped": ["shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                "from_snapshot"],
    "shutdown": ["finished", "guest", "host"],
    "pmsuspended": ["memory", "disk"],
    "crashed": ["panicked"],
}


def word(table: list[str], index: int) -> str:
    return table[index] if 0 <= index < len(table) else f"code_{index}"


def state_words(state: int, reason: int) -> tuple[str, str]:
    name = STATES.get(state, f"code_{state}")
    return name, word(STATE_REASONS.get(name, []), reason)


def event_words(event: int, detail: int) -> tuple[str, str]:
    name = EVENTS.get(event, f"code_{event}")
    return name, word(EVENT_DETAILS.get(name, []), detail)
