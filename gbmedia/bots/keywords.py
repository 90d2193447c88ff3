"""The keyword API's map: every name of the old platform's keyword library, by API group.

The General Bots server served its keyword library over HTTP as ``systemKeywords``,
``dialogKeywords``, ``imageProcessing`` and ``webAutomation`` (shared/notes/gb-basic.md);
gbmedia serves the same names as ``POST /api/v1/keywords/{group}/{name}`` with the groups
``system``, ``dialog``, ``image`` and ``web``. A name is served by the built-in of the same
name in :data:`~gbmedia.bots.registry.REGISTRY` (its canonical name or an alias), so a
dialog and the API can never disagree. Every other registered built-in (``mid``,
``ucase``...) is served in the ``system`` group too.

How a keyword behaves over HTTP, beyond its arguments:

- :data:`DIALOG_ONLY`: it changes a running dialog's own state (where it is, its
  settings): only a dialog can run it; over HTTP it is 409 ``keyword_dialog_only``.
- :data:`NEEDS_RUN`: it acts on a conversation and its user (``talk``, ``userName``...):
  with a dialog run's token it acts on that run's conversation and user; with an
  instance's token it is 409 ``keyword_run_required``.
"""

from __future__ import annotations

from gbmedia.bots.registry import REGISTRY, Builtin

# fmt: off
GROUPS: dict[str, tuple[str, ...]] = {
    "system": (
        "callVM", "append", "seeCaption", "seeText", "sortBy", "JSONAsGBTable", "renderTable",
        "closeHandles", "asPDF", "asImage", "executeSQL", "getFileContents", "getRandomId",
        "getStock", "wait", "talkTo", "getUser", "sendSmsTo", "set", "internalGetDocument",
        "saveFile", "uploadFile", "note", "saveToStorageBatch", "saveToStorage",
        "saveToStorageWithJSON", "save", "getHttp", "isValidDate", "isValidNumber", "isValidHour",
        "getFilter", "find", "getDateFromLocaleString", "createFolder", "shareFolder",
        "internalCreateDocument", "createDocument", "copyFile", "convert", "generatePassword",
        "flattenJSON", "getCustomToken", "getByHttp", "putByHttp", "postByHttp", "numberOnly",
        "createLead", "fill", "screenCapture", "numberToLetters", "getTableFromName", "merge",
        "tweet", "rewrite", "pay", "autoSave", "internalAutoSave", "deleteFromStorage",
        "deleteFile", "getExtensionInfo", "dirFolder", "log",
    ),
    "dialog": (
        "chart", "getOCR", "getToday", "exit", "getActiveTasks", "createDeal", "findContact",
        "getContentLocaleWithCulture", "getCoded", "getWeekFromDate", "getDateDiff", "format",
        "dateAdd", "getHourFromDate", "getNow", "getToLst", "getQRCode", "sendEmail", "sendFile",
        "sendFileTo", "sendTemplateTo", "talk", "hear", "setLanguage", "allowRole", "setMaxLines",
        "setMaxColumns", "setOutput", "setUserParam", "setFilter", "setPageMode", "setWholeWord",
        "setTheme", "setTranslatorOn", "getConfig", "userName", "userMobile", "gotoDialog",
        "showMenu", "transferTo", "start",
    ),
    "web": (
        "isSelector", "cyrb53", "closeHandles", "openPage", "getPageByHandle", "getBySelector",
        "getByFrame", "hover", "click", "pressKey", "linkByText", "clickButton", "screenshot",
        "setElementText", "download", "getTextOf",
    ),
    "image": ("sharpen", "blur", "mergeImage"),
}
# fmt: on

# The old platform's paths: POST /systemKeywords/<name> and so on.
OLD_PREFIXES = {
    "systemKeywords": "system",
    "dialogKeywords": "dialog",
    "imageProcessing": "image",
    "webAutomation": "web",
}

# The note's names for built-ins BASIC had under another name: the note's becomes the canonical one
# (what the registry describes and errors say), BASIC's stays an alias (and the statement tables' name).
RENAMES: dict[str, str] = {
    "userOf": "getUser",
    "sendSms": "sendSmsTo",
    "sendMail": "sendEmail",
    "setParam": "setUserParam",
    "toList": "getToLst",
    "today": "getToday",
    "now": "getNow",
    "hour": "getHourFromDate",
    "dateDiff": "getDateDiff",
    "isNumber": "isValidNumber",
    "base64": "getCoded",
    "postHttp": "postByHttp",
    "putHttp": "putByHttp",
}
# More note names for a built-in that has its note name already.
ALIASES: dict[str, tuple[str, ...]] = {
    "getHttp": ("getByHttp",),
    "save": ("saveToStorage", "saveToStorageWithJSON"),
    "log": ("note",),
    "screenshot": ("screenCapture",),  # the system group's name for a picture of the current page
}

# Statements of the dialog's own flow: no built-in runs them, a dialog does.
STATEMENTS = {"hear", "exit", "start", "showMenu"}

DIALOG_ONLY = STATEMENTS | {
    "set",
    "setLanguage",
    "setMaxLines",
    "setMaxColumns",
    "setOutput",
    "setFilter",
    "setPageMode",
    "setWholeWord",
    "setTheme",
    "setTranslatorOn",
    "setHeader",
    "allowRole",
    "wait",
}
# A dialog's media bot lives in the run's settings: over HTTP there is no run to keep it (media bots have
# their REST API, /api/v1/rooms/{room_id}/media_bots).
DIALOG_ONLY |= {"joinRoom", "showClock", "showSlide", "showChart", "processVideo", "playTone", "say", "leaveRoom"}
DIALOG_ONLY -= {"exit"}  # with a run token, exit ends that run
NEEDS_RUN = {
    "talk",
    "userName",
    "userMobile",
    "setUserParam",
    "sendFile",
    "getCustomToken",
    "gotoDialog",
    "transferTo",
    "exit",
}


def register_aliases() -> None:
    """Give BASIC's built-ins the note's names (once: the registry is the process's)."""
    for old, new in RENAMES.items():
        if old in REGISTRY.entries:
            REGISTRY.rename(old, new)
    for name, aliases in ALIASES.items():
        if name in REGISTRY.entries:
            REGISTRY.alias(name, *(a for a in aliases if REGISTRY.get(a) is None))


def group_of(name: str) -> str:
    """The API group a registered built-in is served in (``system`` for BASIC's own built-ins)."""
    for group, names in GROUPS.items():
        if name in names:
            return group
    return "system"


def names(group: str) -> list[str]:
    """Every name the group serves: the note's, and (``system``) every other registered built-in."""
    listed = list(GROUPS[group])
    if group == "system":
        known = {n.upper() for g in GROUPS.values() for n in g}
        for name, entry in sorted(REGISTRY.entries.items()):
            if name.upper() not in known and not any(REGISTRY.get(n) is entry for n in known):
                listed.append(name)
    return listed


def resolve(group: str, name: str) -> tuple[str, Builtin | None] | None:
    """The served name and its built-in (None for a dialog statement); None when the group has no such name."""
    if group not in GROUPS:
        return None
    served = {n.upper(): n for n in names(group)}
    canonical = served.get(name.upper())
    if canonical is None:
        return None
    if canonical in STATEMENTS:
        return canonical, None
    entry = REGISTRY.get(canonical)
    return (canonical, entry) if entry is not None else None


def missing() -> list[tuple[str, str]]:
    """The note's names no built-in serves yet, by group (the completeness test lists them)."""
    return [(g, n) for g, group in GROUPS.items() for n in group if n not in STATEMENTS and REGISTRY.get(n) is None]
