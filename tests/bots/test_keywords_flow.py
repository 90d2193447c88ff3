"""One BASIC dialog doing a small job end to end (issue 18): data, files, HTTP, the browser and e-mail, in a chat.

A person orders in a conversation with the bot; the dialog asks a price service over
HTTP, reads the stock off the shop's web page in the node's browser (and keeps a picture
of it), stores the order in its table, has another dialog word the order line (callVM),
writes a receipt file, sums the day's orders with executeSQL and mails the receipt
through the instance's SMTP server. The keyword API then reads the same table and files
the dialog wrote.
"""

from __future__ import annotations

import base64
import uuid
from email import message_from_bytes

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import NODE
from tests.bots.chat import Person, bot_conversation, upload
from tests.bots.test_keywords_api import keyword
from tests.bots.test_providers import allow_local, put_provider, smtp  # noqa: F401 (the fixture)
from tests.helpers import Tenant

ORDER = """TABLE orders
  id integer auto key
  customer string(60) *
  item string(40) *
  quantity integer
  price number
  stock integer
END TABLE

TALK "What is your name?"
HEAR name AS NAME
TALK "What would you like?"
HEAR item AS "coffee", "tea"
TALK "How many?"
HEAR quantity AS INTEGER
quote = GET "${url}/price/" + item
OPEN "${url}/shop/" + item
stock = TEXT OF "#stock"
picture = screenCapture("#stock", "stock/" + item + ".png")
SAVE "orders", name, item, quantity, quote.price, stock
today = FIND "orders", "customer=" + name
total = executeSQL(today, "SELECT sum(quantity * price) AS due FROM data")
receipt = name + ": " + callVM("wording", "line", quantity, item) + " = " + total[0].due
SAVE receipt AS "receipts/" + numberOnly(name + "1") + ".txt"
SEND MAIL "orders@acme.test", "Order of " + name, receipt
TALK "Thanks! " + receipt
"""
WORDING = 'FUNCTION line(n, what)\n  RETURN n + " x " + what\nEND FUNCTION\n'
SHOP = '<!doctype html><h1>{item}</h1><p>In stock: <span id="stock">{stock}</span></p>'


async def test_a_dialog_takes_an_order_through_data_files_http_the_browser_and_mail(
    client: TestClient,
    tenant: Tenant,
    smtp,  # noqa: F811
):
    port, inbox = smtp

    async def price(request: web.Request) -> web.Response:
        return web.json_response({"item": request.match_info["item"], "price": 2.5})

    async def shop(request: web.Request) -> web.Response:
        return web.Response(text=SHOP.format(item=request.match_info["item"], stock=12), content_type="text/html")

    app = web.Application()
    app.router.add_get("/price/{item}", price)
    app.router.add_get("/shop/{item}", shop)
    async with TestServer(app, host="127.0.0.1") as server:
        await allow_local(client, tenant)
        mail = {"host": "127.0.0.1", "port": port, "sender": "bot@acme.test"}
        await put_provider(client, tenant, "mail", {"kind": "smtp", "settings": mail})
        url = str(server.make_url("")).rstrip("/")
        await upload(client, tenant, "wording", WORDING)
        await upload(client, tenant, "start", ORDER.replace("${url}", url))
        conversation = await bot_conversation(client, tenant, "ana")
        ana = Person(client, client.app[NODE], tenant, "ana", conversation)
        assert await ana.say("hi") == ["What is your name?"]
        assert await ana.say("Ana Lima") == ["What would you like?"]
        assert await ana.say("Tea") == ["How many?"]
        assert await ana.say("3") == ["Thanks! Ana Lima: 3 x tea = 7.5"]
    # The mail went out through the instance's SMTP server.
    ((sender, recipients, raw),) = inbox.messages
    message = message_from_bytes(raw)
    assert (sender, recipients, message["Subject"]) == ("bot@acme.test", ["orders@acme.test"], "Order of Ana Lima")
    assert message.get_payload().strip() == "Ana Lima: 3 x tea = 7.5"
    # The keyword API reads what the dialog wrote: its table row and its file.
    order = await keyword(client, "system", "find", {"table": "orders", "filters": ["customer=ana lima"]}, tenant.admin)
    assert order["result"] == {"id": 1, "customer": "Ana Lima", "item": "tea", "quantity": 3, "price": 2.5, "stock": 12}
    receipt = await keyword(client, "system", "getFileContents", {"name": "receipts/1.txt"}, tenant.admin)
    assert receipt["result"] == "Ana Lima: 3 x tea = 7.5"
    picture = await keyword(client, "system", "internalGetDocument", {"name": "stock/tea.png"}, tenant.admin)
    assert picture["result"]["type"] == "image/png"
    assert base64.b64decode(picture["result"]["data"]).startswith(b"\x89PNG\r\n\x1a\n")
    # The dialog ran compiled to WebAssembly (callVM's dialog in the interpreter, in the same sandbox).
    compiled = await client.app[NODE].bots.dialogs.compiled(uuid.UUID(tenant.instance_id), "start")
    assert getattr(compiled, "_wasm", None) is not None and getattr(compiled, "_not_compiled", None) is None
    # The browser's pages did not outlive the run.
    assert not client.app[NODE].bots.browsers.sessions
