"""The manager (``hostbus manager``): the fleet's live state, HA restarts, maintenance
mode and moves, decided by one active instance among several."""
