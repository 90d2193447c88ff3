"""Bot storage over the keyword API (issue 18, part 2): a dialog's TABLE, then save, find, merge, delete over HTTP.

The tables are the instance's rows in the typed JSONB store (migration 0007); what HTTP
saves a dialog finds, and another tenant's call reaches its own instance only.
"""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.bots.chat import upload
from tests.bots.test_keywords_api import keyword, run_basic
from tests.helpers import Tenant, create_tenant

CONTACTS = """TABLE contacts
  id integer auto key
  name string(40) *
  city string(40)
  age integer
END TABLE
TALK "declared"
"""


async def test_tables_declared_by_a_stored_dialog_are_filled_and_read_over_http_and_basic(
    client: TestClient, tenant: Tenant
):
    await upload(client, tenant, "contacts", CONTACTS)  # storing it declares the table
    admin = tenant.admin
    fields = (await keyword(client, "system", "getTableFromName", {"table": "contacts"}, admin))["result"]
    assert [f["name"] for f in fields["fields"]] == ["id", "name", "city", "age"]
    saved = await keyword(client, "system", "save", {"table": "contacts", "values": ["Ana", "São Paulo", 31]}, admin)
    assert saved["result"] == {"id": 1, "name": "Ana", "city": "São Paulo", "age": 31}
    body = {"table": "contacts", "values": [{"name": "Bo", "city": "Rio", "age": "20"}]}
    await keyword(client, "system", "saveToStorageWithJSON", body, admin)
    rows = [{"name": "Cy", "city": "Recife", "age": 45}, ["Di", "Sao Paulo", 52]]
    batch = await keyword(client, "system", "saveToStorageBatch", {"table": "contacts", "rows": rows}, admin)
    assert batch["result"] == 2
    # find: accent- and case-insensitive, the note's operators.
    found = await keyword(client, "system", "find", {"table": "contacts", "filters": ["city=SAO PAULO"]}, admin)
    assert [r["name"] for r in found["result"]] == ["Ana", "Di"]
    found = await keyword(client, "system", "find", {"table": "contacts", "filters": ["age>30", "city<>recife"]}, admin)
    assert [r["name"] for r in found["result"]] == ["Ana", "Di"]
    found = await keyword(client, "system", "find", {"table": "contacts", "filters": ["name in bo;cy"]}, admin)
    assert [r["name"] for r in found["result"]] == ["Bo", "Cy"]
    found = await keyword(client, "system", "find", {"table": "contacts", "filters": ["name not in ana;bo;cy"]}, admin)
    assert found["result"]["name"] == "Di"  # one row: the row itself
    # The dialog sees what HTTP saved, the same way.
    said = (await run_basic(client, tenant, 'x = FIND "contacts", "city=sao paulo"\nTALK UBOUND(x)')).said
    assert said == ["2"]
    # merge reports adds, updates and skipped.
    data = [{"name": "Ana", "age": 32}, {"name": "Bo", "city": "Rio", "age": 20}, {"name": "Eva", "city": "Natal"}]
    merged = await keyword(client, "system", "merge", {"table": "contacts", "data": data, "key": "name"}, admin)
    assert merged["result"] == {"adds": 1, "updates": 1, "skipped": 1}
    ana = await keyword(client, "system", "find", {"table": "contacts", "filters": ["name=ana"]}, admin)
    assert (ana["result"]["age"], ana["result"]["city"]) == (32, "São Paulo")
    # deleteFromStorage takes at least one filter and says how many it removed.
    missing = await keyword(client, "system", "deleteFromStorage", {"table": "contacts"}, admin, 400)
    assert missing["error"]["details"]["argument"] == "filter"
    removed = await keyword(client, "system", "deleteFromStorage", {"table": "contacts", "filter": "age>=45"}, admin)
    assert removed["result"] == 2
    said = (await run_basic(client, tenant, 'x = FIND "contacts", "age<100"\nTALK TOLIST(x, "name")')).said
    assert said == ["Ana, Bo, Eva"]
    # Wrong values are refused naming the field.
    bad = await keyword(client, "system", "save", {"table": "contacts", "values": ["", "X"]}, admin, 400)
    assert "name" in bad["error"]["message"]
    bad = await keyword(client, "system", "save", {"table": "contacts", "values": ["Z", "X", "old"]}, admin, 400)
    assert "age" in bad["error"]["message"]
    bad = await keyword(client, "system", "saveToStorageBatch", {"table": "contacts", "rows": {"a": 1}}, admin, 400)
    assert bad["error"]["code"] == "keyword_failed"
    # Another tenant's calls run in its own instance: the table is not there.
    other = await create_tenant(client, "other")
    for name, body in (
        ("find", {"table": "contacts", "filters": ["name=ana"]}),
        ("getTableFromName", {"table": "contacts"}),
        ("deleteFromStorage", {"table": "contacts", "filter": "age>0"}),
        ("save", {"table": "contacts", "values": ["Mallory"]}),
    ):
        answer = await keyword(client, "system", name, body, other.admin, 400)
        assert "not declared" in answer["error"]["message"], name
        assert "Ana" not in str(answer)
    left = await keyword(client, "system", "find", {"table": "contacts", "filters": ["age<100"]}, admin)
    assert len(left["result"]) == 3
