"""An instance's files: SAVE AS, READFILE, DIR, COPY, FOLDER, DELETE, FILL, UPLOAD; no way out of its folder."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.limits import Limits
from tests.bots.helpers import said, talk_with


@pytest.fixture
def files(tmp_path: Path) -> InstanceFiles:
    return InstanceFiles(tmp_path / "data", "inst-a")


async def test_save_read_list_copy_and_delete(files: InstanceFiles, tmp_path: Path):
    source = """
SAVE "hello" AS "notes/a.txt"
o = NEW OBJECT
o.n = 1
SAVE o AS "notes/o.json"
CREATE FOLDER "reports/2026"
COPY "notes/a.txt", "reports"
TALK READFILE("reports/a.txt")
listing = DIR "notes"
TALK TOLIST(listing, "name"), listing[0].size, listing[0].folder
top = DIR ""
TALK TOLIST(top, "path")
n = DELETE "notes/a.txt"
m = DELETE "notes/none.txt"
TALK n, m
DELETE "reports"
TALK TOLIST(DIR(""), "name")
"""
    assert await said(source, files=files) == ["hello", "a.txt, o.json 5 false", "notes, reports", "1 0", "notes"]
    root = tmp_path / "data" / "bots" / "inst-a" / "files"
    assert (root / "notes" / "o.json").read_text() == '{\n  "n": 1\n}'


async def test_fill_a_template_with_data(files: InstanceFiles):
    source = 'SAVE "Dear {{name}}, you owe {{ bill.total }}. {{missing}}!" AS "t.txt"\no = NEW OBJECT\no.name = "Ana"\n'
    source += 'o.bill = NEW OBJECT\no.bill.total = 10\nx = FILL "t.txt" WITH o\nTALK x'
    assert await said(source, files=files) == ["Dear Ana, you owe 10. !"]


async def test_upload_stores_a_file_the_user_sent(files: InstanceFiles, tmp_path: Path):
    sent = {"name": "../../photo.png", "data": base64.b64encode(b"\x89PNG").decode()}
    outcome, port = await talk_with(
        'HEAR f AS FILE\np = UPLOAD f\nTALK p\nq = UPLOAD f, "pics"\nTALK q', [sent], files=files
    )
    assert outcome.status == "done", outcome.error
    assert port.said == ["uploads/photo.png", "pics/photo.png"]
    assert (tmp_path / "data" / "bots" / "inst-a" / "files" / "uploads" / "photo.png").read_bytes() == b"\x89PNG"
    for bad, message in [
        ('"x"', "UPLOAD takes a file the user sent"),
        ('PARSEJSON("{""name"": ""a"", ""data"": ""%%""}")', "not Base64"),
    ]:
        outcome, _ = await talk_with(f"p = UPLOAD {bad}", files=files)
        assert message in outcome.error.message


@pytest.mark.parametrize(
    "name",
    ["../other/x.txt", "/etc/passwd", "a/../../x", "..", "", "a\\..\\..\\x"],
)
async def test_paths_cannot_leave_the_instance_folder(files: InstanceFiles, name: str):
    outcome, _ = await talk_with(f'SAVE "x" AS "{name}"', files=files)
    assert outcome.status == "failed" and "is not a file name of this bot" in outcome.error.message


async def test_a_symbolic_link_out_of_the_folder_is_refused(files: InstanceFiles, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    files.root.mkdir(parents=True)
    os.symlink(secret, files.root / "link.txt")
    outcome, _ = await talk_with('x = READFILE("link.txt")', files=files)
    assert "leads outside this bot's files" in outcome.error.message


async def test_two_instances_have_separate_folders(tmp_path: Path):
    a, b = InstanceFiles(tmp_path, "a"), InstanceFiles(tmp_path, "b")
    await said('SAVE "mine" AS "f.txt"', files=a)
    outcome, _ = await talk_with('x = READFILE("f.txt")', files=b)
    assert "no file f.txt" in outcome.error.message


async def test_errors_and_sizes(files: InstanceFiles):
    for source, message in [
        ('x = DIR "nope"', "no folder nope"),
        ('COPY "nope", "b"', "no file nope"),
        ('DELETE "."', "the bot's root folder cannot be deleted"),
        ('CREATE FOLDER "d"\nSAVE "x" AS "d"', "d is a folder"),
    ]:
        outcome, _ = await talk_with(source, files=files)
        assert message in outcome.error.message, source
    outcome, _ = await talk_with(
        'SAVE "x" AS "big.txt"\nx = READFILE("big.txt")', files=files, limits=Limits(max_value_bytes=1024)
    )
    assert outcome.status == "done"
    outcome, _ = await talk_with(
        's = "0123456789"\nFOR i = 1 TO 7\n s = s + s\nNEXT\nSAVE s AS "big.txt"',
        files=files,
        limits=Limits(max_value_bytes=1024),
    )
    assert outcome.error.limit == "GBMEDIA_BOT_MAX_VALUE_BYTES"
    outcome, _ = await talk_with('x = READFILE("f")')
    assert "files are not available to this run" in outcome.error.message
