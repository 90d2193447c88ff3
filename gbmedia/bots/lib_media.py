"""Media bot built-ins: a dialog joins a room's call and shows, processes, plays and says things there.

``JOIN ROOM "standup" AS "Slide Bot"`` puts a media bot (gbmedia/bots/media/) in a room
of the instance; the other statements act on the run's bot: ``SHOW CLOCK``, ``SHOW
SLIDE title, lines...``, ``SHOW CHART values, title, labels`` (what it draws), ``PROCESS
VIDEO OF participant WITH "blur"`` (a participant's camera, filtered), ``PLAY TONE hz``
(``0``: silence), ``SAY text`` (speech in the run's language, eSpeak NG), ``LEAVE ROOM``.
A dialog's bot joins silent: it sounds only when told to.
"""

from __future__ import annotations

from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.media.bot import MediaBot
from gbmedia.bots.media.dialog import SETTING
from gbmedia.bots.media.filters import FILTERS
from gbmedia.bots.media.renderers import Chart, Clock, Slide
from gbmedia.bots.media.service import BotSpec
from gbmedia.bots.media.speech import synthesize
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import kind_of, to_text
from gbmedia.errors import ApiError

builtin = REGISTRY.builtin

MAX_LINES = 12
MAX_VALUES = 50
MAX_TITLE = 200


def _bot(ctx: Context) -> MediaBot:
    return ctx.need_media().bot(ctx.settings.get(SETTING))


def _title(value: Any) -> str:
    text = to_text(value) if value is not None else ""
    if len(text) > MAX_TITLE:
        raise Fault(f"a title has at most {MAX_TITLE} characters")
    return text


def _texts(values: tuple[Any, ...]) -> tuple[str, ...]:
    items: list[Any] = []
    for value in values:
        items.extend(value if isinstance(value, list) else [value])
    if len(items) > MAX_LINES:
        raise Fault(f"a slide holds at most {MAX_LINES} lines")
    return tuple(to_text(v) for v in items)


def _numbers(values: Any) -> tuple[float, ...]:
    items = values if isinstance(values, list) else [values]
    if not items or len(items) > MAX_VALUES:
        raise Fault(f"SHOW CHART takes 1 to {MAX_VALUES} numbers")
    for value in items:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Fault(f"SHOW CHART takes numbers, not {kind_of(value)}")
    return tuple(float(v) for v in items)


@builtin("joinRoom", "room, name?", group="media", bare=True)
async def join_room(ctx: Context, room: Any, name: Any = None) -> dict[str, Any]:
    """Join a room of the instance (its name or id) as a media bot showing a clock (JOIN ROOM "r" AS "Bot")."""
    port = ctx.need_media()
    current = ctx.settings.get(SETTING)
    if current and current in port.bots.bots and not port.bots.bots[current].left:
        raise Fault("the dialog's media bot is in a room already: LEAVE ROOM first")
    label = to_text(name).strip() if name is not None else "Bot"
    if not label or len(label) > 64:
        raise Fault("a media bot's name has 1 to 64 characters")
    bot = await port.join(to_text(room).strip(), BotSpec(name=label, show="clock", audio=True))
    if bot.audio is not None:
        bot.audio.amplitude = 0.0  # a dialog's bot is silent until PLAY TONE or SAY
    ctx.settings[SETTING] = bot.id
    return bot.to_json()


@builtin("showClock", "label?", group="media", statement_only=True)
async def show_clock(ctx: Context, label: Any = None) -> None:
    """The bot shows a clock (SHOW CLOCK ["label"])."""
    await _bot(ctx).show(Clock(_title(label) or "UTC"))


@builtin("showSlide", "title, lines...", group="media", statement_only=True)
async def show_slide(ctx: Context, title: Any, *lines: Any) -> None:
    """The bot shows a slide: a title and lines, or a list of lines (SHOW SLIDE "Agenda", "one", "two")."""
    await _bot(ctx).show(Slide(_title(title), _texts(lines)))


@builtin("showChart", "values, title?, labels?", group="media", statement_only=True)
async def show_chart(ctx: Context, values: Any, title: Any = None, labels: Any = None) -> None:
    """The bot shows a bar chart of numbers (SHOW CHART [3, 5, 8], "Signups", ["Mon", "Tue", "Wed"])."""
    numbers = _numbers(values)
    names = _texts((labels,)) if labels is not None else ()
    await _bot(ctx).show(Chart(numbers, _title(title), names))


@builtin("processVideo", "participant, filter?", group="media", bare=True)
async def process_video(ctx: Context, participant: Any, filter_: Any = None) -> str:
    """The bot publishes a participant's camera through a filter: blur, sharpen, edges, face_blur (its track id)."""
    bot = _bot(ctx)
    name = to_text(filter_).strip().lower().replace(" ", "_") if filter_ is not None else "blur"
    if name not in FILTERS:
        raise Fault(f"PROCESS VIDEO: no filter {name!r} (there are {', '.join(FILTERS)})")
    try:
        return await bot.process(to_text(participant), FILTERS[name]())
    except ApiError as exc:
        raise Fault(f"PROCESS VIDEO OF {to_text(participant)[:100]}: {exc.message}") from None


@builtin("playTone", "hz?", group="media", statement_only=True)
async def play_tone(ctx: Context, hz: Any = None) -> None:
    """The bot sounds a tone (PLAY TONE 440); PLAY TONE 0 makes it silent again."""
    frequency = 440.0 if hz is None else hz
    if not isinstance(frequency, int | float) or isinstance(frequency, bool) or not 0 <= frequency <= 20_000:
        raise Fault("PLAY TONE takes a frequency from 0 to 20000 Hz")
    audio = _bot(ctx).audio
    if audio is None:  # pragma: no cover - a dialog's bots always have an audio track
        raise Fault("the bot has no audio")
    audio.frequency = float(frequency) or 440.0
    audio.amplitude = 0.1 if frequency else 0.0


@builtin("say", "text", group="media", statement_only=True)
async def say(ctx: Context, text: Any) -> None:
    """The bot says a text aloud in the run's language (eSpeak NG): SAY "Welcome"."""
    bot = _bot(ctx)
    samples = await synthesize(to_text(text), ctx.language)
    if bot.audio is not None:
        bot.audio.say(samples)


@builtin("leaveRoom", "", group="media", statement_only=True)
async def leave_room(ctx: Context) -> None:
    """The bot leaves its room (LEAVE ROOM); a dialog may then JOIN ROOM again."""
    bot = _bot(ctx)
    ctx.settings.pop(SETTING, None)
    await bot.leave()
