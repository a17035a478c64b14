"""The dashboard in headless Chromium: token login, the queue (only your jobs), a job page whose curves grow from
the event stream, checkpoint downloads, the cancel button, the compare page, and the same with a real worker."""
from __future__ import annotations

import re

import httpx
from playwright.sync_api import expect

from ttm.client import Client

from client_helpers import add_metrics, digits_spec, run_job


def _points(page, metric: str):
    return page.locator(f'figure[data-metric="{metric}"] path.line')


def test_served_by_the_api_with_nothing_from_outside(api):
    with httpx.Client(base_url=api.url) as http:
        r = http.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
        for path in ("/ui/", "/ui/jobs/job_x", "/ui/compare"):
            r = http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in r.headers["content-security-policy"]
        for name in ("app.js", "chart.js", "style.css"):
            r = http.get(f"/ui/static/{name}")
            text = r.text.replace("http://www.w3.org/2000/svg", "")  # SVG's namespace is a name, not a fetch
            assert r.status_code == 200 and "http://" not in text and "https://" not in text and "//cdn" not in text
        for bad in ("/ui/static/..%2F__init__.py", "/ui/static/.hidden", "/ui/static/nope.js"):
            assert http.get(bad).status_code == 404
        assert "/ui/" not in http.get("/openapi.json").text  # not part of the API's schema


def test_login_queue_and_isolation(api, open_page):
    with Client(api.url, api.alice) as alice, Client(api.url, api.bob) as bob:
        a1, a2 = alice.submit(digits_spec("alice-one")), alice.submit(digits_spec("alice-two"))
        b1 = bob.submit(digits_spec("bob-one"))

    page = open_page(f"{api.url}/")  # / leads to the dashboard, which asks for a token first
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", "not-a-token")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("refused")

    page.fill("#token", api.alice)
    page.click("#login button[type=submit]")
    rows = page.locator("#jobs tr[data-job-id]")
    expect(rows).to_have_count(2)
    expect(page.locator(f'tr[data-job-id="{a1["id"]}"] .position')).to_have_text("1")
    # bob's one job goes between alice's two (fair share: docs/SCHEDULING.md); the page shows only alice's
    expect(page.locator(f'tr[data-job-id="{a2["id"]}"] .position')).to_have_text("3")
    expect(page.locator(f'tr[data-job-id="{a2["id"]}"] [data-state]')).to_have_text("queued")
    expect(page.locator("#jobs .owner")).to_have_text(["alice", "alice"])
    expect(page.locator(f'tr[data-job-id="{b1["id"]}"]')).to_have_count(0)

    # the token survives a reload; another user's job does not exist for alice
    page.goto(f"{api.url}/ui/jobs/{b1['id']}")
    expect(page.locator("main")).to_contain_text("No such job")
    expect(page.locator("#cancel")).to_have_count(0)

    # a state change shows up in the queue without a reload
    page.goto(f"{api.url}/ui/")
    run_job(api.settings, a1["id"])
    expect(page.locator(f'tr[data-job-id="{a1["id"]}"] [data-state]')).to_have_text("running")

    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", api.bob)
    page.click("#login button[type=submit]")
    expect(rows).to_have_count(1)
    expect(page.locator(f'tr[data-job-id="{b1["id"]}"]')).to_have_count(1)

    admin = open_page(f"{api.url}/ui/", api.admin)  # an admin sees everyone's
    expect(admin.locator("#jobs tr[data-job-id]")).to_have_count(3)


def test_the_queue_page_shows_the_dispatch_order_and_usage(api, open_page):
    with Client(api.url, api.alice) as alice, Client(api.url, api.bob) as bob:
        done = alice.submit(digits_spec("alice-earlier"))
        a1, a2 = alice.submit(digits_spec("alice-one")), alice.submit(digits_spec("alice-two"))
        b1 = bob.submit(digits_spec("bob-one"))
    run_job(api.settings, done["id"], to="succeeded")  # alice has used the queue lately: bob's job goes first
    page = open_page(f"{api.url}/ui/queue?queue=cpu", api.alice)
    expect(page.locator("#nav-lab-queue")).to_have_class(re.compile("active"))
    rows = page.locator("#lab-queue tr[data-position]")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("another user's job")  # bob's: its place, not its name
    expect(rows.nth(0)).not_to_contain_text("bob-one")
    expect(rows.nth(1).locator("a")).to_have_text("alice-one")
    expect(rows.nth(2).locator("a")).to_have_attribute("href", f"/ui/jobs/{a2['id']}")
    # the bars: bob has used nothing, alice a job's worth
    bob_bar = rows.nth(0).locator(".usage-bar span")
    alice_bar = rows.nth(1).locator(".usage-bar span")
    assert float(bob_bar.evaluate("e => e.getBoundingClientRect().width")) < float(
        alice_bar.evaluate("e => e.getBoundingClientRect().width"))
    expect(page.locator("#lab-summary")).to_contain_text("3 queued")
    positions = [job["queue_position"] for job in (Client(api.url, api.alice).job(a1["id"]),
                                                   Client(api.url, api.bob).job(b1["id"]))]
    assert positions == [2, 1]  # the page's order is the jobs' own queue_position
    page.select_option("#queue-name", "gpu")
    expect(page.locator("#lab-queue")).to_contain_text("Nothing queued.")


def test_job_page_curves_grow_downloads_and_cancel(api, open_page):
    with Client(api.url, api.alice) as c:
        job = c.submit(digits_spec("curves", epochs=5))
    run_job(api.settings, job["id"], checkpoint=True)
    page = open_page(f"{api.url}/ui/jobs/{job['id']}", api.alice)
    expect(page.locator("#job-state [data-state]")).to_have_text("running")
    expect(page.locator("#history li")).to_have_count(2)
    expect(page.locator("#spec")).to_contain_text('"arch": "resnet8"')
    expect(page.locator('figure[data-metric="test/top1"]')).to_have_attribute("data-points", "0")

    metrics = ("train/loss", "test/top1", "test/entropy", "test/kl")
    for epoch in (1, 2, 3):
        add_metrics(api.settings, job["id"], epoch, {"train/loss": 2.0 / epoch, "test/top1": 40.0 + 10 * epoch,
                                                     "test/entropy": 1.5 / epoch, "test/kl": 0.3 / epoch,
                                                     "test/top5": 99.0})
        for name in metrics:  # the curve grows while the job runs, with no reload
            expect(_points(page, name)).to_have_attribute("data-points", str(epoch))

    # checkpoints download through the API with the token
    button = page.locator('#checkpoints button[data-which="best"]')
    expect(button).to_have_count(1)
    with page.expect_download() as download:
        button.click()
    assert open(download.value.path(), "rb").read() == f"best weights of {job['id']}".encode()

    page.click("#cancel")  # the dialog is accepted by the fixture
    expect(page.locator("#job-state [data-state]")).to_have_text("cancelling")
    assert Client(api.url, api.alice).job(job["id"])["state"] == "cancelling"
    run_job(api.settings, job["id"], to="cancelled")  # the worker has stopped the trainer
    expect(page.locator("#job-state [data-state]")).to_have_text("cancelled")
    expect(page.locator("#history li[data-state=cancelled]")).to_have_count(1)
    expect(page.locator("#cancel")).to_be_hidden()


def test_compare_overlays_kd_ttm_wttm(api, open_page, teacher_pth):
    losses = {"kd": {"kind": "kd"}, "ttm": {"kind": "ttm", "gamma": 0.3, "beta": 1.5},
              "wttm": {"kind": "wttm", "gamma": 0.3, "beta": 1.5}}
    with Client(api.url, api.alice) as c:
        teacher = {"arch": "resnet8", "weights": str(teacher_pth)}
        jobs = [c.submit({**digits_spec(name), "loss": loss, "teacher": teacher}) for name, loss in losses.items()]
    for i, job in enumerate(jobs):
        run_job(api.settings, job["id"])
        for epoch in (1, 2):
            add_metrics(api.settings, job["id"], epoch, {"test/top1": 50.0 + epoch + i, "train/loss": 1.0 / epoch})
    ids = ",".join(j["id"] for j in jobs)
    page = open_page(f"{api.url}/ui/compare?jobs={ids}", api.alice)
    top1 = _points(page, "test/top1")
    expect(top1).to_have_count(3)
    for job in jobs:
        expect(page.locator(f'figure[data-metric="test/top1"] path[data-series="{job["id"]}"]')).to_have_attribute(
            "data-points", "2")
    legend = page.locator('figure[data-metric="test/top1"] .legend li')
    expect(legend).to_have_count(3)
    for kind in ("KD", "TTM", "WTTM"):
        expect(legend.filter(has_text=re.compile(rf"· {kind}\b"))).to_have_count(1)
    # a running job's new epoch appears without a reload
    add_metrics(api.settings, jobs[0]["id"], 3, {"test/top1": 60.0})
    expect(page.locator(f'figure[data-metric="test/top1"] path[data-series="{jobs[0]["id"]}"]')).to_have_attribute(
        "data-points", "3", timeout=10_000)

    # selecting jobs on the queue page leads to the same comparison
    queue = open_page(f"{api.url}/ui/", api.alice)
    for job in jobs[:2]:
        queue.locator(f'tr[data-job-id="{job["id"]}"] input[type=checkbox]').check()
    queue.click("#compare-selected")
    expect(queue).to_have_url(re.compile(r"/ui/compare\?jobs="))
    expect(_points(queue, "test/top1")).to_have_count(2)


def test_live_job_curve_grows_and_cancel(live, open_page):
    """A real worker trains the job: the top-1 curve grows epoch by epoch, then the cancel button stops it."""
    with Client(live.url, live.alice) as c:
        job = c.submit(digits_spec("live-dashboard", epochs=200))
    page = open_page(f"{live.url}/ui/jobs/{job['id']}", live.alice)
    top1 = page.locator('figure[data-metric="test/top1"]')
    expect(top1).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"), timeout=60_000)
    first = int(top1.get_attribute("data-points"))
    grown = "n => Number(document.querySelector('figure[data-metric=\"test/top1\"]').dataset.points) > n"
    page.wait_for_function(grown, arg=first, timeout=60_000)
    expect(page.locator("#job-state [data-state]")).to_have_text("running")
    page.click("#cancel")
    expect(page.locator("#job-state [data-state]")).to_have_text("cancelled", timeout=30_000)
    assert Client(live.url, live.alice).job(job["id"])["state"] == "cancelled"
    expect(page.locator('#checkpoints button[data-which="last"]')).to_have_count(2)  # pt and safetensors
