"""The web UI in a real browser: headless Chromium (Debian `chromium`) driven
by Playwright (PyPI `playwright`, launched with `executable_path`, so no
`playwright install` download). A user logs in with broker credentials, sees
a queue declared over AMQP with its depth, browses it (nothing becomes
redelivered), publishes through the UI and gets the message back, purges and
deletes it, with no console errors on the way.

With HOPPER_UI_SCREENSHOTS=DIR the test also saves the main pages as PNGs
in DIR (that is how docs/ui/*.png are made).

Skipped when Chromium or Playwright is missing, unless HOPPER_REQUIRE_BROWSER=1
(CI sets it, so a missing browser fails there instead of passing silently).
"""

import json
import os
import shutil

import pika
import pytest

from amqp_helpers import get_one
from conftest import EXTERNAL, PASSWORD, USERNAME

if EXTERNAL:
    pytest.skip("the web UI is Hopper's own", allow_module_level=True)

REQUIRE = os.environ.get("HOPPER_REQUIRE_BROWSER") == "1"
CHROMIUM = os.environ.get("HOPPER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    if REQUIRE:
        raise
    pytest.skip("playwright is not installed (pip install -r compat/requirements.txt)", allow_module_level=True)

if not CHROMIUM:
    if REQUIRE:
        raise RuntimeError("HOPPER_REQUIRE_BROWSER=1 but no chromium binary (apt-get install chromium)")
    pytest.skip("no chromium binary (apt-get install chromium)", allow_module_level=True)

SHOTS = os.environ.get("HOPPER_UI_SCREENSHOTS")
# Playwright's waits (expect) give up after this; the page refreshes every 5 s.
expect.set_options(timeout=10_000)


@pytest.fixture
def mgmt(broker):
    return broker.stdout_value("hopper management listening on ")


@pytest.fixture
def page():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            pg = context.new_page()
            pg.errors = []
            pg.on("console", lambda m: m.type == "error" and pg.errors.append(m.text))
            pg.on("pageerror", lambda e: pg.errors.append(str(e)))
            yield pg
        finally:
            browser.close()


def shot(page, name):
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=False)


def figure(page, label):
    return page.locator(f'#queue-figures [data-figure="{label}"]')


@pytest.mark.timeout(120)
def test_login_queue_browse_publish_get_purge_delete(mgmt, amqp, page):
    q = amqp.queue_name()
    ch = amqp.channel(confirm=True)
    ch.queue_declare(q, durable=True)
    for i in range(3):
        ch.basic_publish("", q, f"amqp message {i}".encode(),
                         pika.BasicProperties(delivery_mode=2, content_type="text/plain"))

    # Login: the queues page asks for credentials first, then comes back.
    page.goto(f"http://{mgmt}/#/queues")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    expect(page.locator("form.login .error-text")).to_contain_text("Login failed")
    # (the browser logs the refused request itself as a console error)
    assert all("401" in e for e in page.errors), page.errors
    page.errors.clear()
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"http://{mgmt}/#/queues")

    # The queue declared over AMQP, by name (as text), with its depth.
    row = page.locator("#queue-table tbody tr", has_text=q)
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(1)).to_have_text(q)
    expect(row.locator("td").nth(4)).to_have_text("3")
    page.fill("input[name=filter]", q)
    expect(page.locator("#queue-table tbody tr")).to_have_count(1)
    page.fill("input[name=filter]", q + "-no-such-queue")
    expect(page.locator("#queue-table tbody tr")).to_have_text("No queue matches the filter")
    page.fill("input[name=filter]", q)
    row.locator("a", has_text=q).click()
    expect(page.locator("#queue-name")).to_have_text(q)
    expect(figure(page, "ready")).to_have_text("3")

    # Browse: all three, in order, none redelivered; the queue is unchanged.
    page.click("#browse button[type=submit]")
    rows = page.locator("#browsed tbody tr")
    expect(rows).to_have_count(3)
    for i in range(3):
        expect(rows.nth(i)).to_contain_text(f"amqp message {i}")
        expect(rows.nth(i).locator("td").nth(0)).to_have_text(str(i))
        expect(rows.nth(i).locator("td").nth(3)).to_have_text("false")
    expect(figure(page, "ready")).to_have_text("3")
    # Search, and page on from where a window ended.
    page.fill("input[name=search]", "message 2")
    page.click("#browse button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.nth(0).locator("td").nth(0)).to_have_text("2")
    page.fill("input[name=search]", "")
    page.fill("input[name=browse_count]", "2")
    page.click("#browse button[type=submit]")
    expect(rows).to_have_count(2)
    page.click("#browse-next")
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_contain_text("amqp message 2")
    expect(figure(page, "ready")).to_have_text("3")

    # Publish through the UI (default exchange, routing key = the queue).
    page.fill("#publish textarea[name=payload]", "published from the UI")
    page.click("#publish button[type=submit]")
    expect(page.locator("#flash")).to_contain_text("Message published.")
    page.reload()
    expect(figure(page, "ready")).to_have_text("4")

    # Get it back (taking all four, acked): the UI's message is the last.
    page.fill("input[name=get_count]", "4")
    page.select_option("select[name=ackmode]", "ack_requeue_false")
    page.click("#get button[type=submit]")
    got = page.locator("#got tbody tr")
    expect(got).to_have_count(4)
    expect(got.nth(3)).to_contain_text("published from the UI")
    expect(got.nth(0)).to_contain_text("amqp message 0")
    expect(figure(page, "ready")).to_have_text("0")
    # ...and the messages browsed before were first delivered as new ones.
    expect(got.nth(0).locator("td").nth(2)).to_have_text("false")

    # Purge (two clicks: the button asks once), then delete.
    for i in range(2):
        ch.basic_publish("", q, b"to purge", pika.BasicProperties(delivery_mode=2))
    page.reload()
    expect(figure(page, "ready")).to_have_text("2")
    purge = page.locator("button", has_text="Purge")
    purge.click()
    page.locator("button", has_text="Confirm: purge").click()
    expect(page.locator("#flash")).to_contain_text("Queue purged")
    expect(figure(page, "ready")).to_have_text("0")
    page.locator("button", has_text="Delete queue").click()
    page.locator("button", has_text="Confirm: delete queue").click()
    expect(page).to_have_url(f"http://{mgmt}/#/queues")
    expect(page.locator("#queue-table tbody tr", has_text=q)).to_have_count(0)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        amqp.channel().queue_declare(q, passive=True)

    # The other main pages render (and make the screenshots).
    if SHOTS:
        # Something to look at: a few queues with messages, and three
        # refreshes of the overview's charts.
        for name, n in (("orders", 1200), ("invoices", 340), ("emails.dead-letter", 12)):
            qn = name
            amqp.track_queue(qn)
            ch.queue_declare(qn, durable=True)
            for i in range(n):
                body = json.dumps({"id": i, "queue": name, "amount": round(i * 1.37, 2)}).encode()
                ch.basic_publish("", qn, body, pika.BasicProperties(
                    delivery_mode=2, content_type="application/json", message_id=f"{name}-{i}"))
    page.goto(f"http://{mgmt}/#/")
    if SHOTS:
        page.wait_for_timeout(11_000)
    expect(page.locator("#totals .card")).to_have_count(8)
    expect(page.locator(".chart canvas")).to_have_count(2)
    expect(page.locator("#durability .card")).to_have_count(6)
    shot(page, "overview")
    page.goto(f"http://{mgmt}/#/queues")
    expect(page.locator("#queue-table tbody tr").first).to_be_visible()
    shot(page, "queues")
    if SHOTS:
        page.goto(f"http://{mgmt}/#/queues/%2F/invoices")
        page.fill("input[name=browse_count]", "3")
        page.click("#browse button[type=submit]")
        expect(page.locator("#browsed tbody tr")).to_have_count(3)
        page.locator("#browse").scroll_into_view_if_needed()
        shot(page, "queue")
    page.goto(f"http://{mgmt}/#/exchanges")
    expect(page.locator("table")).to_contain_text("amq.topic")
    shot(page, "exchanges")
    page.goto(f"http://{mgmt}/#/connections")
    expect(page.locator("#connections")).to_contain_text(USERNAME)
    shot(page, "connections")

    assert page.errors == [], f"console errors: {page.errors}"


def login(page, mgmt, where="#/"):
    page.goto(f"http://{mgmt}/{where}")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"http://{mgmt}/{where}")


@pytest.mark.timeout(120)
def test_exchanges_connections_admin_pages_and_durability_figures(mgmt, amqp, page):
    q = amqp.queue_name()
    ch = amqp.channel(confirm=True)
    ch.queue_declare(q, durable=True)
    ch.queue_bind(q, "amq.topic", routing_key="ui.#")

    # Publish on an exchange's page: routed by the topic binding.
    login(page, mgmt, "#/exchanges")
    page.locator("a", has_text="amq.topic").click()
    expect(page.locator("table")).to_contain_text(q)
    page.fill("#publish input[name=routing_key]", "ui.test")
    page.fill("#publish textarea[name=payload]", "via amq.topic")
    page.click("#publish button[type=submit]")
    expect(page.locator("#flash")).to_contain_text("Message published.")
    method, _, body = get_one(ch, q, auto_ack=True)
    assert body == b"via amq.topic" and method.routing_key == "ui.test"

    # Move messages from another queue to amq.topic (Hopper only): they
    # arrive in `q` through the binding and leave the source.
    src = amqp.queue_name()
    ch.queue_declare(src, durable=True)
    for i in range(2):
        ch.basic_publish("", src, f"move {i}".encode(), pika.BasicProperties(delivery_mode=2))
    page.goto(f"http://{mgmt}/#/queues/%2F/{src}")
    expect(figure(page, "ready")).to_have_text("2")
    page.fill("input[name=move_count]", "5")
    page.fill("input[name=move_exchange]", "amq.topic")
    page.fill("input[name=move_routing_key]", "ui.moved")
    page.click("#move button[type=submit]")
    expect(page.locator("#flash")).to_contain_text("Moved 2 message(s).")
    expect(figure(page, "ready")).to_have_text("0")
    for i in range(2):
        method, _, body = get_one(ch, q, auto_ack=True)
        assert body == f"move {i}".encode() and method.routing_key == "ui.moved"

    # Close a connection from the connections page: the client sees 320.
    victim = amqp.connect(client_properties={"connection_name": "ui-victim", "product": "ui-victim"})
    page.goto(f"http://{mgmt}/#/connections")
    row = page.locator("#connections tbody tr", has_text="ui-victim")
    expect(row).to_have_count(1)
    row.locator("button", has_text="Close").click()
    row.locator("button", has_text="Confirm: close").click()
    expect(page.locator("#flash")).to_contain_text("Connection closed")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(100):
            victim.process_data_events(time_limit=0.1)
    assert closed.value.reply_code == 320

    # Administrators' pages: a user added and deleted, permissions, definitions.
    user = f"ui-user-{q[-8:]}"
    page.goto(f"http://{mgmt}/#/users")
    page.fill("input[name=name]", user)
    page.fill("input[name=password]", "secret")
    page.fill("input[name=tags]", "monitoring")
    page.click("button[type=submit]")
    row = page.locator("tbody tr", has_text=user)
    expect(row).to_contain_text("monitoring")
    # That user (monitoring, not administrator) sees no admin pages; a new
    # tab has its own sessionStorage, so it logs in afresh.
    other = page.context.new_page()
    other.goto(f"http://{mgmt}/#/users")
    other.fill("input[name=username]", user)
    other.fill("input[name=password]", "secret")
    other.click("button[type=submit]")
    expect(other.locator("main")).to_have_text("This page is for administrators.")
    expect(other.locator("#nav a")).to_have_text(["Overview", "Queues", "Exchanges", "Connections"])
    other.goto(f"http://{mgmt}/#/queues")
    expect(other.locator("#queue-table")).to_contain_text(q)
    other.close()
    page.goto(f"http://{mgmt}/#/vhosts")
    expect(page.locator("tbody")).to_contain_text("/")
    page.goto(f"http://{mgmt}/#/permissions")
    expect(page.locator("tbody")).to_contain_text(USERNAME)
    page.goto(f"http://{mgmt}/#/policies")
    expect(page.locator("h1")).to_have_text("Policies")
    page.goto(f"http://{mgmt}/#/definitions")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download definitions").click()
    with open(download.value.path()) as fh:
        defs = json.load(fh)
    assert any(u["name"] == user for u in defs["users"])
    assert any(x["name"] == q for x in defs["queues"])

    # Import with a preview of what it would change first.
    new_q = amqp.queue_name()
    defs["queues"].append({"name": new_q, "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}})
    page.fill("textarea[name=definitions]", json.dumps(defs))
    page.get_by_role("button", name="Preview changes").click()
    queues_row = page.locator("#definitions-diff tbody tr", has_text="queues")
    expect(queues_row.locator("td").nth(1)).to_have_text("1")
    expect(queues_row).to_contain_text(new_q)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        amqp.channel().queue_declare(new_q, passive=True)
    page.get_by_role("button", name="Import definitions").click()
    expect(page.locator("#flash")).to_contain_text("Definitions imported")
    amqp.channel().queue_declare(new_q, passive=True)
    page.goto(f"http://{mgmt}/#/users")
    row = page.locator("tbody tr", has_text=user)
    row.locator("button", has_text="Delete").click()
    row.locator("button", has_text="Confirm: delete").click()
    expect(page.locator("tbody tr", has_text=user)).to_have_count(0)

    # The durability figures render from /api/overview's store_stats when the
    # broker reports them (answer rewritten here), and "—" when it does not.
    def with_store_stats(route):
        response = route.fetch()
        o = response.json()
        o["store_stats"] = {"fsyncs": 12345, "fsyncs_details": {"rate": 42.5},
                            "messages_per_fsync": 7.25,
                            "confirm_latency_us": {"p50": 850, "p99": 4200},
                            "paged_out_bytes": 3 * 1048576}
        route.fulfill(response=response, json=o)

    page.route("**/api/overview", with_store_stats)
    page.goto(f"http://{mgmt}/#/")
    store = page.locator("#durability")
    expect(store).to_contain_text("12,345")
    expect(store).to_contain_text("42.5/s")
    expect(store).to_contain_text("7.3")
    expect(store).to_contain_text("850 µs")
    expect(store).to_contain_text("4,200 µs")
    expect(store).to_contain_text("3.0 MiB")

    assert page.errors == [], f"console errors: {page.errors}"
