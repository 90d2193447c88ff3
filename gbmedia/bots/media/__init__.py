"""Bots as media participants of rooms: they draw video (a clock, a slide, a chart), send a tone,
and publish a participant's video processed with OpenCV (blur, sharpen, edges, face blur).

:mod:`~gbmedia.bots.media.bot` is the Python API (``MediaBot.join``, ``show``, ``process``,
``leave``) that BASIC keywords and the REST API call; docs/bots.md, "Media bots", describes it.
"""
