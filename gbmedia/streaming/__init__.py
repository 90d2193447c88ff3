"""LL-HLS packaging of live rooms: fMP4 parts, playlists, the HTTP routes."""
