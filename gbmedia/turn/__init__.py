"""TURN: time-limited credentials for clients, and the node's own coturn when none is configured."""
