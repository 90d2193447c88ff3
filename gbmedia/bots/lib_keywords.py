"""The keyword API's names that BASIC lacked: small pure keywords and the settings a dialog changes.

Each is one built-in, so a dialog (``x = getWeekFromDate(d)``) and the keyword API
(``POST /api/v1/keywords/dialog/getWeekFromDate``) run the same code.
"""

from __future__ import annotations

import mimetypes
from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.lib_dates import WEEKDAYS, iso, now, parse_date
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import kind_of, to_text

builtin = REGISTRY.builtin

CULTURES = {
    "en": "en-US",
    "pt": "pt-BR",
    "es": "es-ES",
    "fr": "fr-FR",
    "de": "de-DE",
    "it": "it-IT",
    "nl": "nl-NL",
    "ja": "ja-JP",
    "zh": "zh-CN",
    "ru": "ru-RU",
}


@builtin("JSONAsGBTable", "data")
def json_as_table(ctx: Context, data: Any) -> list[list[Any]]:
    """A list of objects as a table: a header row of their fields (in order of appearance), then one row each."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise Fault(f"JSONAsGBTable takes a list of objects, not {kind_of(data)}")
    header: list[str] = []
    for item in data:
        header += [str(k) for k in item if str(k) not in header]
    rows = [[item.get(k) for k in header] for item in data]
    return ctx.budget.check_value([header, *rows])


@builtin("getDateFromLocaleString", "text")
def date_from_locale_string(ctx: Context, text: Any) -> str:
    """A date written the run's locale's way (dd/MM/yyyy in Portuguese, MM/dd/yyyy in English) as ISO."""
    return iso(parse_date(text, ctx.language))


@builtin("getWeekFromDate", "date?")
def week_from_date(ctx: Context, value: Any = None) -> str:
    """The name of the day of the week of a date (or today), in the run's language."""
    moment = now() if value is None else parse_date(value, ctx.language)
    return WEEKDAYS.get(ctx.language, WEEKDAYS["en"])[moment.weekday()]


@builtin("getContentLocaleWithCulture", "locale")
def locale_with_culture(ctx: Context, locale: Any) -> str:
    """A language with its usual country: "pt" gives "pt-BR", "en" gives "en-US"; a full locale stays as it is."""
    text = to_text(locale).strip().replace("_", "-")
    if not text or not text.split("-")[0].isalpha():
        raise Fault(f"{text!r} is not a language code")
    if "-" in text:
        language, country = text.split("-", 1)
        return f"{language.lower()}-{country.upper()}"
    return CULTURES.get(text.lower(), f"{text.lower()}-{text.upper()}")


@builtin("getExtensionInfo", "name")
def extension_info(ctx: Context, name: Any) -> dict[str, str]:
    """A file name's extension and media type ({extension: "pdf", type: "application/pdf"})."""
    text = to_text(name).strip()
    if "." not in text.rsplit("/", 1)[-1]:
        raise Fault(f"{text!r} has no extension")
    extension = text.rsplit(".", 1)[1].lower()
    media_type = mimetypes.guess_type(f"x.{extension}", strict=False)[0] or "application/octet-stream"
    return {"extension": extension, "type": media_type}


@builtin("getCustomToken", "", group="conversation")
def custom_token(ctx: Context) -> str:
    """A token for this run (an hour): an outside system calls the keyword API with it, in this conversation only."""
    if ctx.run_token is None:
        raise Fault("only a running dialog has a run token")
    return ctx.run_token()


@builtin("userName", "", group="conversation")
def user_name(ctx: Context) -> str:
    """The name of the person the run talks to (their id when they gave none)."""
    user = ctx.port.user
    if user is None:
        raise Fault("this run talks to nobody")
    return user.name or user.id


@builtin("userMobile", "", group="conversation")
def user_mobile(ctx: Context) -> str:
    """The mobile number (or chat identity) of the person the run talks to."""
    user = ctx.port.user
    if user is None:
        raise Fault("this run talks to nobody")
    return user.mobile or user.id


def _setting(name: str, setting: str, doc: str) -> None:
    def change(ctx: Context, value: Any) -> None:
        ctx.settings[setting] = value

    change.__doc__ = doc
    builtin(name, "value", group="settings", statement_only=True)(change)


_setting("setLanguage", "LANGUAGE", "The run's language from now on (SET LANGUAGE): dates, yes/no words, messages.")
_setting("setMaxLines", "MAX LINES", "How many lines of a list the run shows at most (SET MAX LINES).")
_setting("setMaxColumns", "MAX COLUMNS", "How many columns of a table the run shows at most (SET MAX COLUMNS).")
_setting("setOutput", "OUTPUT", "How the run's lists are shown (SET OUTPUT).")
_setting("setFilter", "FILTER", "A filter the run's later FINDs apply (SET FILTER).")
_setting("setPageMode", "PAGE MODE", "How the run pages long answers (SET PAGE MODE).")
_setting("setWholeWord", "WHOLE WORD", "Whether menus match whole words only (SET WHOLE WORD).")
_setting("setTheme", "THEME", "The theme of what the run shows (SET THEME).")
_setting("setTranslatorOn", "TRANSLATOR", "Whether the run translates what it says (SET TRANSLATOR).")
