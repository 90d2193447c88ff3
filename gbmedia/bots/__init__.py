"""Bots: the GB BASIC language, its dialog engine and keyword API, bot participants."""
