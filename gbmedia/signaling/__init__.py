"""Signaling: the participant WebSocket protocol, WHIP/WHEP and routing between nodes."""
