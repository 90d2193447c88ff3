"""Recording: per-track and composite recordings of rooms, and their storage."""
