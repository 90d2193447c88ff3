"""The room domain: rooms, live rooms, participants, the kind's policy, the program, the Room API."""
