"""Built-ins that talk to people and change settings, through the in-memory conversation port."""

from __future__ import annotations

from gbmedia.bots.host import MemoryPort, UserInfo
from tests.bots.helpers import said, talk_with


async def test_talk_print_and_sends_go_through_the_port():
    outcome, port = await talk_with(
        'TALK "a", 1\nPRINT "b"\nTALK TO "+5511", "hi"\nSEND SMS TO "+5511", "code"\n'
        'SEND MAIL "a@b.c", "Sub", "Body"\nSEND FILE "r.txt"\nSEND FILE TO "+55", "r.txt", "cap"\n'
        'LOG "for ops"\nDEBUG "detail"\nTRANSFER TO "agent"\nTRANSFER'
    )
    assert outcome.status == "done"
    assert port.said == ["a 1", "b"]
    assert port.sent == [
        ("talk", "+5511", {"text": "hi"}),
        ("sms", "+5511", {"text": "code"}),
        ("mail", "a@b.c", {"subject": "Sub", "body": "Body"}),
        ("file", "user", {"file": "r.txt", "caption": ""}),  # SEND FILE: to the run's user
        ("file", "+55", {"file": "r.txt", "caption": "cap"}),
    ]
    assert port.logs == [("info", "for ops"), ("debug", "detail")]
    assert port.transferred_to == ["agent", None]


async def test_allow_role_lets_a_member_through_and_stops_others_politely():
    admin = MemoryPort(user=UserInfo("u1", roles=("Admin",)))
    assert await said('ALLOW ROLE "admin"\nTALK "secret"', port=admin) == ["secret"]
    outcome, port = await talk_with('ALLOW ROLE "admin"\nTALK "secret"', locale="pt")
    assert outcome.status == "stopped"
    assert port.said == ["Desculpe, você não tem permissão para isso."]


async def test_user_of_and_set_param():
    port = MemoryPort(people={"1": {"name": "Ana", "mobile": "+5511", "email": "ana@x.com"}})
    assert await said('u = USER OF "ANA@x.com"\nTALK u.mobile\nSET PARAM "color" AS "blue"', port=port) == ["+5511"]
    assert port.params == {"color": "blue"}
    assert await said('u = USER OF "nobody"\nTALK ISEMPTY(u)') == ["true"]


async def test_settings_and_config():
    config = {"bots": {"params": {"Greeting": "Olá"}}}
    assert await said('g = GET CONFIG "greeting"\nTALK g\nx = GET CONFIG "none"\nTALK ISEMPTY(x)', config=config) == [
        "Olá",
        "true",
    ]
    outcome, _ = await talk_with('SET MAX LINES 10\nSET OUTPUT ARRAY\nSET HEADER "X-Key" AS "1"\nHEAR x')
    assert outcome.state["settings"] == {"MAX LINES": 10, "OUTPUT": "ARRAY", "HEADERS": {"X-Key": "1"}}


async def test_a_header_cannot_smuggle_a_line_break():
    outcome, _ = await talk_with('SET HEADER "X" AS "ok"\nSET HEADER "Bad:Name" AS "1"')
    assert "cannot hold ':' or line breaks" in outcome.error.message and outcome.error.line == 2


async def test_wait_and_goto_checks():
    assert await said('WAIT 0\nTALK "ok"') == ["ok"]
    outcome, _ = await talk_with("WAIT -1")
    assert "0 or more" in outcome.error.message
    outcome, _ = await talk_with('GO TO ""')
    assert "GO TO needs a dialog name" in outcome.error.message
