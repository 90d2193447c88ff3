"""Recording: per-track and composite recordings, LL-HLS packaging, storage."""
