"""Media plane: forwards RTP from publishers to subscribers without transcoding."""
