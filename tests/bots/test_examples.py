"""The dialogs of examples/bots/ work: in the terminal (``gbmedia bot run``) and on a node, in chat and on schedule.

The same files the docs show: a greeting with a menu (start.bas) that hands over to a
form (expense.bas: e-mail, date and money, each re-asked until it fits, saved in a
table), and a report (report.bas) that runs on its schedule and sums the table.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient

from gbmedia.bots.scheduler import Scheduler
from gbmedia.node import Node
from tests.bots.chat import Person, bot_conversation, upload
from tests.bots.terminal import EXAMPLES, bot_run
from tests.bots.test_scheduler import Clock
from tests.helpers import Tenant

MENU = ["How can I help you, Ana Lima?", "1. Opening hours", "2. Register an expense", "3. Goodbye"]
# The person's side of a whole visit: name, a bad menu choice, hours, then the form with a misfit answer each.
VISIT = ["Ana Lima", "4", "1", "Register an expense", "ana@", "Ana@Example.com", "31/12/2026", "12/31/2026"]
VISIT += ["lots", "$1,234.50", "Taxi to the airport"]


def source(name: str) -> str:
    return (EXAMPLES / f"{name}.bas").read_text(encoding="utf-8")


def test_every_example_is_a_file_the_docs_show() -> None:
    docs = (EXAMPLES.parents[1] / "docs" / "bots.md").read_text(encoding="utf-8")
    names = sorted(p.name for p in EXAMPLES.glob("*.bas"))
    assert names == ["expense.bas", "expense_table.bas", "media.bas", "report.bas", "start.bas"]
    for name in names:
        assert f"examples/bots/{name}" in docs


def test_the_menu_and_the_form_in_the_terminal_then_the_report_over_the_same_tables(tmp_path: Path) -> None:
    tables = tmp_path / "tables.json"
    run = bot_run(EXAMPLES / "start.bas", VISIT, "--tables", str(tables))
    assert run.code == 0, run.err
    assert run.said == [
        "Hello! I am the front desk bot of Example Ltd.",
        "What is your name?",
        *MENU,
        "Please choose one of: Opening hours, Register an expense, Goodbye.",
        "We are open Monday to Friday, 9:00 to 18:00.",
        *MENU,
        "Let us register your expense.",
        "Your e-mail?",
        "Please type a valid e-mail address.",
        "When did you spend it? (like 12/31/2026)",
        "Please type a date, like 12/31/2026.",
        "How much was it?",
        "Please type an amount, like 1,234.56.",
        "What was it for?",
        "Saved: 1,234.50 on 2026-12-31. You have 1 expense(s) registered.",
    ]
    again = bot_run(EXAMPLES / "expense.bas", ["bo@example.com", "2026-12-01", "10", "Lunch"], "--tables", str(tables))
    assert again.code == 0 and again.said[-1] == "Saved: 10.00 on 2026-12-01. You have 1 expense(s) registered."

    report = bot_run(EXAMPLES / "report.bas", [], "--tables", str(tables))
    assert report.code == 0, report.err
    assert report.said == [
        "Expense report: 2 expense(s), 1,244.50 in all.",
        "- 2026-12-31 ana@example.com: 1,234.50 (Taxi to the airport)",
        "- 2026-12-01 bo@example.com: 10.00 (Lunch)",
    ]
    empty = bot_run(EXAMPLES / "report.bas", [])
    assert empty.said == ["Expense report: nothing registered."]


def test_goodbye_ends_the_menu_and_a_zero_amount_saves_nothing(tmp_path: Path) -> None:
    bye = bot_run(EXAMPLES / "start.bas", ["Ana Lima", "3"])
    assert bye.code == 0 and bye.said[-1] == "Goodbye, Ana Lima!"
    zero = bot_run(EXAMPLES / "expense.bas", ["a@example.com", "2026-12-01", "0"])
    assert zero.code == 0 and zero.said[-1] == "An expense must be more than zero; nothing was saved."


async def test_the_examples_on_a_node_in_chat_and_on_schedule(
    client: TestClient, node: Node, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    for name in ("expense_table", "start", "expense", "report"):  # an INCLUDEd dialog is stored first
        await upload(client, tenant, name, source(name))
    ana = Person(client, node, tenant, "ana", await bot_conversation(client, tenant, "ana"))
    said = [await ana.say(text) for text in ["hi", *VISIT]]
    assert said[0] == ["Hello! I am the front desk bot of Example Ltd.", "What is your name?"]
    assert said[1] == MENU
    assert said[2] == ["Please choose one of: Opening hours, Register an expense, Goodbye."]
    assert said[4] == ["Let us register your expense.", "Your e-mail?"]  # GO TO "expense" in the same turn
    assert said[5] == ["Please type a valid e-mail address."]
    assert said[-1] == ["Saved: 1,234.50 on 2026-12-31. You have 1 expense(s) registered."]

    next_at = await pool.fetchval(
        "SELECT next_at FROM schedules WHERE instance_id = $1 AND dialog_name = 'report'", uuid.UUID(tenant.instance_id)
    )
    assert next_at.hour == 8 and next_at.isoweekday() <= 5
    clock = Clock(next_at + dt.timedelta(seconds=1))
    runner = node.bots.engine.runner
    one, two = Scheduler(pool, runner, clock=clock), Scheduler(pool, runner, clock=clock)  # two nodes
    first, second = await asyncio.gather(one.tick(), two.tick())
    assert [f.dialog for f in first + second] == ["report"]
    logged = await pool.fetch(
        "SELECT message FROM instance_logs WHERE instance_id = $1 ORDER BY id", uuid.UUID(tenant.instance_id)
    )
    assert [r["message"] for r in logged][-2:] == [
        "TALK Expense report: 1 expense(s), 1,234.50 in all.",
        "TALK - 2026-12-31 ana@example.com: 1,234.50 (Taxi to the airport)",
    ]
