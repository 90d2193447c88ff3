"""``gbmedia bot run FILE``: TALK on stdout, HEAR from stdin with validation, errors with their place, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bots.terminal import bot_run


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return path


def test_talk_prints_and_hear_reads_stdin_re_asking_until_the_answer_fits(tmp_path: Path) -> None:
    dialog = write(
        tmp_path,
        "ask.bas",
        'TALK "How old are you?"\nHEAR age AS INTEGER\nHEAR ok AS BOOLEAN\nTALK "Next year: ${age + 1}", ok\n',
    )
    run = bot_run(dialog, ["forty", "40", "maybe", "yes"])
    assert run.code == 0, run.err
    assert run.said == [
        "How old are you?",
        "Please type a whole number.",
        "Please answer yes or no.",
        "Next year: 41 true",
    ]


def test_the_locale_option_sets_the_language_of_re_asks(tmp_path: Path) -> None:
    dialog = write(tmp_path, "pt.bas", "HEAR ok AS BOOLEAN\nTALK ok\n")
    run = bot_run(dialog, ["talvez", "sim"], "--locale", "pt-BR")
    assert run.code == 0, run.err
    assert run.said == ["Por favor, responda sim ou não.", "true"]


def test_a_syntax_error_names_file_line_and_column_and_exits_2(tmp_path: Path) -> None:
    dialog = write(tmp_path, "bad.bas", 'TALK "fine"\nTALK "unclosed\n')
    run = bot_run(dialog, [])
    assert run.code == 2 and run.said == []
    assert f"{dialog}: line 2, col 6: unclosed string" in run.err


def test_a_block_error_names_its_line(tmp_path: Path) -> None:
    dialog = write(tmp_path, "loop.bas", "FOR i = 1 TO 3\n  TALK i\n")
    run = bot_run(dialog, [])
    assert run.code == 2 and "line" in run.err and "FOR" in run.err


def test_a_runtime_error_is_told_politely_and_reported_with_its_line_exit_1(tmp_path: Path) -> None:
    dialog = write(tmp_path, "oops.bas", 'TALK "start"\nx = [1, 2]\nTALK x[5]\n')
    run = bot_run(dialog, [])
    assert run.code == 1
    assert run.said[0] == "start" and run.said[-1].startswith("Sorry")
    assert "[error] oops: line 3" in run.err


def test_input_ending_at_a_hear_exits_3(tmp_path: Path) -> None:
    dialog = write(tmp_path, "wait.bas", 'TALK "Your e-mail?"\nHEAR email AS EMAIL\nTALK email\n')
    run = bot_run(dialog, ["not-an-address"])
    assert run.code == 3
    assert run.said == ["Your e-mail?", "Please type a valid e-mail address."]
    assert "waited at a HEAR" in run.err


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    run = bot_run(tmp_path / "none.bas", [])
    assert run.code == 2 and "cannot read" in run.err


def test_include_and_go_to_find_dialogs_beside_the_file(tmp_path: Path) -> None:
    write(tmp_path, "helpers.bas", "FUNCTION twice(n)\n  RETURN n * 2\nEND FUNCTION\n")
    write(tmp_path, "next.bas", 'TALK "in next"\n')
    dialog = write(tmp_path, "first.bas", 'INCLUDE "helpers"\nTALK twice(21)\nGO TO "next"\n')
    run = bot_run(dialog, [])
    assert run.code == 0, run.err
    assert run.said == ["42", "in next"]


def test_tables_live_in_memory_unless_a_scratch_file_is_named(tmp_path: Path) -> None:
    dialog = write(
        tmp_path,
        "count.bas",
        "TABLE visits\n  id integer key auto\n  who string unique\nEND TABLE\n"
        'HEAR who\nSAVE "visits", who\nall = FIND "visits", "id>0"\n'
        "IF ISARRAY(all) THEN TALK UBOUND(all) ELSE TALK 1\n",
    )
    assert bot_run(dialog, ["ana"]).said == ["1"]
    assert bot_run(dialog, ["bia"]).said == ["1"]  # memory: nothing left from the run before
    scratch = tmp_path / "tables.json"
    assert bot_run(dialog, ["ana"], "--tables", str(scratch)).said == ["1"]
    assert bot_run(dialog, ["bia"], "--tables", str(scratch)).said == ["2"]
    kept = json.loads(scratch.read_text())
    assert [row["who"] for _, row in kept["rows"]["visits"]] == ["ana", "bia"]
    refused = bot_run(dialog, ["ana"], "--tables", str(scratch))  # `unique`, as in PostgreSQL
    assert refused.code == 1 and "already has a row with who = ana" in refused.err


def test_files_go_to_the_named_directory_and_nowhere_else(tmp_path: Path) -> None:
    source = 'SAVE "hello" AS "notes/a.txt"\nTALK READFILE("notes/a.txt")\nSAVE "x" AS "../escape.txt"\n'
    dialog = write(tmp_path, "files.bas", source)
    (tmp_path / "out").mkdir()
    run = bot_run(dialog, [], "--files", str(tmp_path / "out"))
    assert (tmp_path / "out" / "notes" / "a.txt").read_text() == "hello"
    assert run.said[0] == "hello" and run.code == 1 and "'..'" in run.err
    assert not (tmp_path / "escape.txt").exists()


def test_http_to_a_private_address_is_refused_as_on_a_node(tmp_path: Path) -> None:
    dialog = write(tmp_path, "ssrf.bas", 'x = GET "http://127.0.0.1:9/"\nTALK x\n')
    run = bot_run(dialog, [])
    assert run.code == 1 and "127.0.0.1" in run.err


def test_a_runaway_loop_stops_at_the_limit_the_settings_give(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GBMEDIA_BOT_MAX_STATEMENTS", "500")
    dialog = write(tmp_path, "spin.bas", 'TALK "go"\nDO\n  x = 1\nLOOP\n')
    run = bot_run(dialog, [])
    assert run.code == 1 and run.said[0] == "go" and run.said[-1].startswith("Sorry")
    assert "limit GBMEDIA_BOT_MAX_STATEMENTS exceeded (allowed: 500)" in run.err


def test_a_file_that_is_not_utf8_exits_2(tmp_path: Path) -> None:
    dialog = tmp_path / "latin.bas"
    dialog.write_bytes(b'TALK "ol\xe1"\n')
    run = bot_run(dialog, [])
    assert run.code == 2 and "not UTF-8" in run.err
