"""An operator's session in the console, in Chromium, against real processes: browse to a
stream and open an event, tail live events, find a lagging group and reset it, see a
poison event in a group's dead letters and redrive it once the app is fixed, and the app
then has it. A read-only user sees no button that would be refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from sluice import START, Client, new_event
from tests.conftest import StoreProcess
from tests.console.conftest import shot
from tests.gateway.conftest import GatewayProcess
from tests.sidecar.conftest import App, Sidecar

WAIT_MS = 30_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_URL = "https://traces.example/trace/{trace_id}"


async def test_an_operator_browses_tails_resets_and_redrives_in_the_console(
    browser: Any,
    sidecars: Callable[..., Sidecar],
    store_proc: StoreProcess,
    app: App,
) -> None:
    gateway = GatewayProcess(store_proc.addr, "--console-trace-url", TRACE_URL)
    try:
        await gateway.start()
        async with Client(store_proc.addr, timeout=10) as c:
            # A group the sidecar serves (a poison event fails there) and one nobody serves.
            app.poison.add("Poison")
            sc = sidecars("pod-1", "--max-attempts", "2", "--max-backoff", "100ms", group="orders")
            await sc.start()
            await c.create_group("audit", stream_prefixes=["orders-"], start=START)
            placed = [new_event("Placed", {"order": n, "items": ["tea", "cake"]}) for n in range(12)]
            for n, ev in enumerate(placed):
                await c.append(f"orders-{n % 3}", [ev])
            traced = new_event(
                "Paid",
                {"order": 1, "total": 12.5},
                metadata={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
            )
            paid = await c.append("orders-1", [traced])
            poison = new_event("Poison", b"\x00\xff\x10 not json")
            await c.append("orders-9", [poison])
            await app.wait(lambda: {e.id for e in app.received if e.type == "Poison"} == {poison.id})

            page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
            page.set_default_timeout(WAIT_MS)
            await page.goto(f"{gateway.http}/console/")
            await page.wait_for_function(
                "n => Number(document.querySelector('[data-testid=head-position]')"
                "?.textContent.replaceAll(',', '')) >= n",
                arg=paid.last_position + 1,
            )
            await expect(page.locator("[data-group=audit] [data-testid=group-lag]")).not_to_have_text("0")
            await shot(page, "overview")

            # Streams: search by prefix, open a stream, open an event.
            await page.get_by_role("link", name="Streams").click()
            await page.get_by_test_id("stream-prefix").fill("orders-")
            await page.get_by_test_id("stream-search").click()
            await expect(page.locator("[data-testid=streams-table] tbody tr")).to_have_count(4)
            await page.locator("[data-stream='orders-1']").click()
            await expect(page.locator("[data-testid=events-table] tbody tr")).to_have_count(5)
            await shot(page, "stream")
            await page.locator("[data-testid=events-table] [data-revision='4']").click()
            await expect(page.get_by_test_id("event-json")).to_contain_text('"total": 12.5')
            link = page.get_by_test_id("trace-link")
            assert await link.get_attribute("href") == TRACE_URL.format(trace_id=TRACE)
            await shot(page, "event")
            # Binary data is shown as hex.
            await page.goto(f"{gateway.http}/console/#/event/orders-9/0")
            await expect(page.get_by_test_id("event-hex")).to_contain_text("00 ff 10 20 6e 6f 74")

            # Live tail with a filter: new events appear as they are appended.
            await page.goto(f"{gateway.http}/console/#/tail")
            await page.get_by_test_id("tail-prefix").fill("orders-")
            await page.get_by_test_id("tail-type").fill("Shipped")
            await page.get_by_test_id("tail-start").click()
            await expect(page.get_by_test_id("tail-state")).to_have_text("live")
            shipped = [new_event("Shipped", {"order": n}) for n in range(3)]
            for ev in shipped:
                await c.append("orders-2", [ev])
            await c.append("orders-2", [new_event("Placed", {"order": 99})])  # filtered out
            for ev in shipped:
                await expect(page.locator(f"[data-testid=tail-table] [data-id='{ev.id}']")).to_have_count(1)
            await expect(page.get_by_test_id("tail-count")).to_have_text("3 events")
            await shot(page, "tail")

            # A lagging group, found from the groups page and reset to the end.
            await page.get_by_role("link", name="Groups").click()
            lag = page.locator("[data-group=audit] [data-testid=group-lag]")
            await expect(lag).not_to_have_text("0")
            await page.locator("[data-group=audit]").click()
            partitions = page.get_by_test_id("partitions-table")
            await expect(partitions).not_to_have_attribute("data-total-lag", "0")
            await shot(page, "group-lagging")
            await page.get_by_test_id("reset-to").select_option("end")
            dialogs: list[str] = []

            async def accept(dialog: Any) -> None:
                dialogs.append(dialog.message)
                await dialog.accept()

            page.on("dialog", accept)
            await page.get_by_test_id("reset-group").click()
            await expect(partitions).to_have_attribute("data-total-lag", "0")
            assert dialogs and "audit" in dialogs[0]
            audit = await c.describe_group("audit")
            assert sum(p.lag_events for p in audit.partitions) == 0

            # The poison event in the orders group's dead letters; the app is fixed; redrive.
            await page.goto(f"{gateway.http}/console/#/group/orders")
            row = page.locator(f"[data-testid=dead-letters-table] [data-dead-id='{poison.id}']")
            await expect(row).to_have_count(1)
            await expect(row.get_by_test_id("dead-reason")).to_contain_text("500")
            await expect(row.locator("td").nth(4)).to_have_text("2")  # attempts
            await shot(page, "dead-letters")
            app.poison.clear()
            await row.get_by_test_id("redrive").click()
            await expect(page.locator("#flash")).to_contain_text("Redriven: 1")
            await app.wait(lambda: any(e.type == "Poison" for e in app.acked))
            assert [e.stream for e in app.acked if e.type == "Poison"] == ["orders-9"]

            # Publish: an event appended from the console is stored as typed.
            await page.goto(f"{gateway.http}/console/#/publish?stream=orders-5")
            await page.get_by_test_id("publish-type").fill("Noted")
            await page.get_by_test_id("publish-data").fill('{"note": "by hand"}')
            await page.get_by_test_id("publish-send").click()
            await expect(page.locator("#flash")).to_contain_text("Appended at revision 0")
            await shot(page, "publish")
            (noted,) = await c.read_list("orders-5")
            assert (noted.type, json.loads(noted.data)) == ("Noted", {"note": "by hand"})
            assert {e.id for e in app.acked} >= {traced.id} | {r.id for r in placed}
    finally:
        await gateway.stop()


async def test_a_search_typed_while_the_list_loads_shows_only_its_own_results(
    browser: Any, store_proc: StoreProcess
) -> None:
    # The unfiltered list is held until the search's list has been drawn, then let go: the
    # page it was for is gone, so its rows must not join the search's (CI once saw 4 + 5).
    gateway = GatewayProcess(store_proc.addr)
    try:
        await gateway.start()
        async with Client(store_proc.addr, timeout=10) as c:
            for name in ("orders-1", "orders-2", "audit-1", "audit-2", "audit-3"):
                await c.append(name, [new_event("Placed", {"n": 1})])
        page = await (await browser.new_context()).new_page()
        page.set_default_timeout(WAIT_MS)
        held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        release = asyncio.Event()

        async def hold_the_unfiltered_list(route: Any) -> None:
            if "prefix=" in route.request.url:
                await route.continue_()
                return
            held.set_result(route)
            await release.wait()
            await route.continue_()

        await page.route("**/v1/streams?*", hold_the_unfiltered_list)
        await page.goto(f"{gateway.http}/console/#/streams")
        async with asyncio.timeout(WAIT_MS / 1000):
            await held
        await page.get_by_test_id("stream-prefix").fill("orders-")
        await page.get_by_test_id("stream-search").click()
        rows = page.locator("[data-testid=streams-table] tbody tr")
        await expect(rows).to_have_count(2)
        release.set()
        # Both navigations are drawn (the first into its own, detached page) ...
        await expect(page.locator("body")).to_have_attribute("data-loading", "0")
        # ... and the page shows the search's rows alone.
        await expect(rows).to_have_count(2)
        shown = await rows.evaluate_all("rs => rs.map(r => r.dataset.stream)")
        assert sorted(shown) == ["orders-1", "orders-2"]
    finally:
        await gateway.stop()


async def test_a_read_only_user_sees_no_buttons_it_would_be_refused(browser: Any, tmp_path: Path) -> None:
    from tests.security.conftest import TOKENS, Setup

    setup = Setup(tmp_path)
    setup.write_policy(
        {
            "rules": [
                {"allow": ["*"], "streams": ["*", "$*"], "who": ["root"]},
                {"allow": ["*"], "groups": ["*"], "who": ["root"]},
                {"allow": ["read", "publish"], "streams": ["*"], "who": ["gateway"]},
                {"allow": ["read", "list", "watch"], "streams": ["*", "$*"], "who": ["auditor"]},
                {"allow": ["list"], "groups": ["*"], "who": ["auditor"]},
            ]
        }
    )
    store = StoreProcess(f"sqlite:///{tmp_path}/s.db", *setup.store_flags(), log=tmp_path / "store.log")
    gateway = setup.gateway(store.addr, tmp_path)
    try:
        await store.start()
        await gateway.start()
        async with Client(store.addr, credentials=setup.creds("root")) as c:
            await c.create_group("billing", stream_prefixes=["orders-"], start=START)
            await c.append("orders-1", [new_event("Placed", {"n": 1})])
        context = await browser.new_context(ignore_https_errors=True)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        base = gateway.http.replace("http://", "https://")

        async def sign_in(name: str) -> None:
            await page.goto(f"{base}/console/")
            await expect(page.locator("#page")).to_have_attribute("data-ready", "true")
            if await page.locator("#token-dialog").get_attribute("open") is None:  # asked already on a 401
                await page.locator("#token-button").click()
            await page.locator("#token-input").fill(TOKENS[name])
            await page.locator("#token-save").click()
            await expect(page.locator("#who")).to_have_text(f"signed in as {name}")

        await sign_in("auditor")
        await page.goto(f"{base}/console/#/group/billing")
        await expect(page.get_by_test_id("partitions-table")).to_be_visible()
        await expect(page.get_by_test_id("reset-group")).to_have_count(0)
        await page.goto(f"{base}/console/#/stream/orders-1")
        await expect(page.get_by_test_id("events-table")).to_be_visible()
        await expect(page.get_by_test_id("delete-stream")).to_have_count(0)
        await shot(page, "read-only-group")
        # What it may not do, the API refuses too (the console only hides it).
        answer = await page.evaluate(
            """async () => {
                const r = await fetch('/v1/groups/billing/reset', {method: 'POST',
                  headers: {Authorization: 'Bearer ' + sessionStorage.getItem('sluice_token')},
                  body: JSON.stringify({to: {end: {}}})});
                return [r.status, (await r.json()).reason];
            }"""
        )
        assert answer == [403, "PERMISSION_DENIED"]

        await sign_in("root")
        await page.goto(f"{base}/console/#/group/billing")
        await expect(page.get_by_test_id("reset-group")).to_be_visible()
        await page.goto(f"{base}/console/#/stream/orders-1")
        await expect(page.get_by_test_id("delete-stream")).to_be_visible()
        await context.close()
    finally:
        await gateway.stop()
        if store.proc is not None and store.proc.returncode is None:
            store.proc.kill()
            await store.proc.wait()


pytestmark = pytest.mark.timeout(300)
