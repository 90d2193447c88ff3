"""Signaling: the transports of the room domain: the participant WebSocket (/rtc), WHIP and WHEP."""
