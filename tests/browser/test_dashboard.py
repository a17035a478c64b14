"""The dashboard in headless Chromium: token login, the jobs page (only your jobs; sorted by a click on a column,
filtered by the search box), a job page whose curves grow from the event stream on an axis to the planned epochs with
the teacher as reference lines, its live log, checkpoint downloads, the cancel button, a failed job's reason, the
compare page (the parameters that differ, one legend), untrusted text staying text, and the same with a real worker;
a real sweep's pages (its list, its trials, their scatter, its student).
Screenshots of the charts are read back pixel by pixel: a chart with data has its line's colour in it."""
from __future__ import annotations

import re
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import expect

from service.dashboard import STATIC
from ttm.client import Client

from client_helpers import add_metrics, digits_spec, run_job, wait_for

SERIES_BLUE = (0x1F, 0x77, 0xB4)  # chart.js PALETTE[0]: a job page's curve, the first job of a comparison
REFERENCE_GREY = (0x5B, 0x62, 0x70)  # chart.js REFERENCE_COLOR: the teacher's line
XSS = '<img src=x onerror="document.body.dataset.pwned=1">'


def _points(page, metric: str):
    return page.locator(f'figure[data-metric="{metric}"] path.line')


def _pixels(png: Path, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    """How many pixels of the screenshot are within `tolerance` (summed over channels) of the colour."""
    with Image.open(png) as image:
        data = image.convert("RGB").getdata()
        return sum(1 for px in data if abs(px[0] - rgb[0]) + abs(px[1] - rgb[1]) + abs(px[2] - rgb[2]) <= tolerance)


def _set_progress(settings, job_id: str, progress: dict[str, int]) -> None:
    from service.db import session_scope
    from service.models import Job

    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.progress = progress


def _chart_shot(page, metric: str, folder: Path) -> Path:
    path = folder / f"chart-{metric.replace('/', '_')}.png"
    page.locator(f'figure[data-metric="{metric}"]').screenshot(path=str(path))
    return path


def test_served_by_the_api_with_nothing_from_outside(api):
    with httpx.Client(base_url=api.url) as http:
        r = http.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
        for path in ("/ui/", "/ui/jobs/job_x", "/ui/compare", "/ui/sweeps", "/ui/sweeps/swp_x"):
            r = http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in r.headers["content-security-policy"]
        names = sorted(p.name for p in STATIC.iterdir() if p.suffix in (".js", ".css"))
        assert {"app.js", "chart.js", "jobs.js", "job.js", "compare.js", "sweeps.js", "scatter.js",
                "style.css"} <= set(names)
        for name in names:
            r = http.get(f"/ui/static/{name}")
            text = r.text.replace("http://www.w3.org/2000/svg", "")  # SVG's namespace is a name, not a fetch
            assert r.status_code == 200 and "http://" not in text and "https://" not in text and "//cdn" not in text
            # text from the API goes in as text: nothing in the pages parses a string as HTML
            assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser", text), name
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


def test_job_page_curves_log_references_downloads_and_cancel(api, open_page, tmp_path):
    with Client(api.url, api.alice) as c:
        job = c.submit(digits_spec("curves", epochs=5))
    run_job(api.settings, job["id"], checkpoint=True, log="2025-01-01 INFO job curves: resnet8 on digits\n"
                                                            "2025-01-01 INFO <b>not bold</b>\n")
    page = open_page(f"{api.url}/ui/jobs/{job['id']}", api.alice)
    expect(page.locator("#job-state [data-state]")).to_have_text("running")
    expect(page.locator("#history li")).to_have_count(2)
    expect(page.locator("#spec")).to_contain_text('"arch": "resnet8"')
    expect(page.locator("#spec")).to_contain_text('\n  "student": {\n    "arch": "resnet8"')  # pretty-printed
    top1 = page.locator('figure[data-metric="test/top1"]')
    expect(top1).to_have_attribute("data-points", "0")
    expect(top1.locator(".empty")).to_have_text("waiting for epoch 1")
    expect(page.locator("#failure")).to_be_hidden()
    expect(page.locator("#progress-epoch")).to_have_text("Epoch 0 / 5")
    expect(page.locator("#progress-eta")).to_contain_text("ETA after epoch 1")

    # the log, as text, and lines the trainer appends after the page opened
    lines = page.locator("#log .log-line")
    expect(lines).to_have_count(2)
    expect(lines.nth(1)).to_have_text("2025-01-01 INFO <b>not bold</b>")
    expect(page.locator("#log b")).to_have_count(0)
    with open(api.settings.home / "runs" / job["id"] / "train.log", "a") as f:
        f.write("2025-01-01 INFO teacher test top-1 71.20\n")
    expect(lines).to_have_count(3)
    expect(page.locator("#log-status")).to_contain_text("3 lines")

    # the teacher's accuracy and entropy, measured before epoch 1: shown at once, and as reference lines
    add_metrics(api.settings, job["id"], 0, {"teacher/top1": 71.2, "teacher/top5": 97.5, "teacher/entropy": 0.4})
    expect(page.locator("#teacher-metrics")).to_contain_text("teacher: test top-1 71.20 %")
    expect(page.locator("#progress-epoch")).to_have_text("Epoch 0 / 5")
    for metric, value in (("test/top1", "71.2"), ("test/top5", "97.5"), ("test/entropy", "0.4")):
        ref = page.locator(f'figure[data-metric="{metric}"] line.reference')
        expect(ref).to_have_count(1)
        expect(ref).to_have_attribute("data-value", value)

    metrics = ("train/loss", "test/top1", "test/top5", "test/entropy", "test/kl", "test/u", "lr")
    for epoch in (1, 2, 3):
        if epoch == 3:  # the worker's copy of the trainer's step in the epoch it is in, read with epoch 3's rows
            _set_progress(api.settings, job["id"], {"epoch": 4, "step": 12, "steps": 30})
        add_metrics(api.settings, job["id"], epoch, {"train/loss": 2.0 / epoch, "test/top1": 40.0 + 10 * epoch,
                                                     "test/entropy": 1.5 / epoch, "test/kl": 0.3 / epoch,
                                                     "test/top5": 80.0 + epoch, "test/u": 1.2 + 0.1 * epoch,
                                                     "lr": 0.1 / epoch, "eta_s": 600.0 - 100 * epoch,
                                                     "images_per_s": 1234.0})
        for name in metrics:  # the curve grows while the job runs, with no reload
            expect(_points(page, name)).to_have_attribute("data-points", str(epoch))
    expect(page.locator("#progress-epoch")).to_have_text("Epoch 3 / 5")
    expect(page.locator("#progress-step")).to_have_text("epoch 4: step 12 / 30")
    expect(page.locator("#progress-eta")).to_contain_text(re.compile(r"ETA 0:0[0-5]:\d\d · running"))
    expect(page.locator("#progress-rate")).to_have_text("1234 images/s")
    # the x axis runs to the planned 5 epochs, not to the 3 done
    expect(top1).to_have_attribute("data-x-max", "5")
    expect(top1.locator(".x-tick").last).to_have_text("5")
    box = top1.locator("svg").bounding_box()  # hovering epoch 2 (x = 56 + 2/5 of 490 in the 560-wide viewBox)
    page.mouse.move(box["x"] + box["width"] * (56 + 0.4 * 490) / 560, box["y"] + box["height"] / 2)
    expect(top1.locator(".readout")).to_have_text(" · epoch 2: 60.000")
    page.mouse.move(0, 0)

    # screenshots: each chart has its curve's colour in it, the teacher's charts its grey line too
    page.screenshot(path=str(tmp_path / "job-page.png"), full_page=True)
    for name in metrics:
        assert _pixels(_chart_shot(page, name, tmp_path), SERIES_BLUE) > 150, name
    assert _pixels(tmp_path / "chart-test_top1.png", REFERENCE_GREY) > 60

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
    expect(page.locator("#log-status")).not_to_contain_text("live")


def test_a_failed_job_says_why_and_untrusted_text_stays_text(api, open_page, tmp_path):
    with Client(api.url, api.alice) as c:
        job = c.submit(digits_spec(XSS))
    run_job(api.settings, job["id"], to="failed", log=f"{XSS}\n<script>document.body.dataset.pwned=2</script>\n")
    inert = "() => !document.querySelector('main img, main script') && !document.body.dataset.pwned"

    jobs = open_page(f"{api.url}/ui/", api.alice)
    link = jobs.locator(f'tr[data-job-id="{job["id"]}"] td.name a')
    expect(link).to_have_text(XSS)
    assert jobs.evaluate(inert)

    page = open_page(f"{api.url}/ui/jobs/{job['id']}", api.alice)
    expect(page.locator("#job-name")).to_have_text(XSS)
    expect(page.locator("#failure")).to_be_visible()
    expect(page.locator("#failure-reason")).to_have_text("test worker: failed")
    empty = page.locator('figure[data-metric="test/top1"] .empty')
    expect(empty).to_have_text("no epoch finished: the job failed")  # not "no data yet"
    expect(page.locator("#log .log-line")).to_have_text([XSS, "<script>document.body.dataset.pwned=2</script>"])
    expect(page.locator("#spec")).to_contain_text(XSS.replace('"', '\\"'))
    assert page.evaluate(inert)
    assert page.title().startswith(XSS)
    page.screenshot(path=str(tmp_path / "failed-job.png"), full_page=True)
    # an empty chart's screenshot has no curve in it: the pixel count tells data from none
    assert _pixels(_chart_shot(page, "test/top1", tmp_path), SERIES_BLUE) < 20

    compare = open_page(f"{api.url}/ui/compare?jobs={job['id']}", api.alice)
    expect(compare.locator(f'#compare-params th[data-job-id="{job["id"]}"] a')).to_have_text(XSS)
    expect(compare.locator("#compare-legend li")).to_contain_text([XSS])
    assert compare.evaluate(inert)


def test_jobs_page_sorts_and_searches_and_compare_shows_what_differs(api, open_page, teacher_pth, tmp_path):
    losses = {"kd": {"kind": "kd"}, "ttm": {"kind": "ttm", "gamma": 0.3, "beta": 1.5},
              "wttm": {"kind": "wttm", "gamma": 0.5, "beta": 2.0}}
    with Client(api.url, api.alice) as c:
        teacher = {"arch": "resnet8", "weights": str(teacher_pth)}
        jobs = [c.submit({**digits_spec(name), "loss": loss, "teacher": teacher}) for name, loss in losses.items()]
    for i, job in enumerate(jobs):
        run_job(api.settings, job["id"])
        add_metrics(api.settings, job["id"], 0, {"teacher/top1": 70.0, "teacher/entropy": 0.5})
        for epoch in (1, 2):
            add_metrics(api.settings, job["id"], epoch, {"test/top1": 50.0 + epoch + i, "train/loss": 1.0 / epoch,
                                                         "eta_s": 30.0 * (3 - epoch)})
    kd, ttm, wttm = (j["id"] for j in jobs)
    run_job(api.settings, kd, to="succeeded", epochs=2, from_epoch=3, checkpoint=True)  # its last checkpoint: epoch 2
    _set_progress(api.settings, ttm, {"epoch": 3, "step": 15, "steps": 30})  # half way through its last epoch

    # the jobs page: the columns, a click on a header sorts, the search box filters
    queue = open_page(f"{api.url}/ui/", api.alice)
    rows = queue.locator("#jobs tr[data-job-id]")
    expect(rows).to_have_count(3)
    expect(rows.locator("td.name a")).to_have_text(["wttm", "ttm", "kd"])  # newest first
    expect(rows.nth(0).locator("td.name a")).to_have_attribute("href", f"/ui/jobs/{wttm}")
    row = queue.locator(f'tr[data-job-id="{ttm}"]')
    expect(row.locator(".arch")).to_have_text("resnet8 → resnet8")
    expect(row.locator(".loss")).to_have_text("TTM")
    expect(row.locator(".params")).to_have_text("γ 0.3 · β 1.5")
    expect(queue.locator(f'tr[data-job-id="{kd}"] .params')).to_have_text("T 4")
    expect(row.locator(".progress")).to_have_text("2 / 3")
    expect(row.locator(".progress")).to_have_attribute("title", "epoch 3: step 15 / 30")
    width = "e => e.getBoundingClientRect().width"
    bar = row.locator(".mini-bar span").evaluate(width) / row.locator(".mini-bar").evaluate(width)
    assert abs(bar - 2.5 / 3) < 0.02, bar  # 2 epochs and half of the third
    expect(row.locator(".eta")).to_have_text(re.compile(r"^0:00:[0-3]\d$"))
    expect(row.locator(".duration")).to_have_text(re.compile(r"^0:00:\d\d$"))
    ended = queue.locator(f'tr[data-job-id="{kd}"]')  # how far an ended job got: its last checkpoint's epoch
    expect(ended.locator(".progress")).to_have_text("2 / 3")
    expect(ended.locator(".eta")).to_have_text("–")
    queue.screenshot(path=str(tmp_path / "jobs.png"), full_page=True)
    names = rows.locator("td.name a")
    queue.click('th[data-sort="name"] button')
    expect(names).to_have_text(["kd", "ttm", "wttm"])
    expect(queue.locator('th[data-sort="name"]')).to_have_attribute("aria-sort", "ascending")
    queue.click('th[data-sort="name"] button')
    expect(names).to_have_text(["wttm", "ttm", "kd"])
    queue.click('th[data-sort="params"] button')  # by γ (KD: 1/T = 0.25), then β
    expect(names).to_have_text(["kd", "ttm", "wttm"])
    queue.fill("#job-search", "wttm")
    expect(names).to_have_text(["wttm"])
    queue.fill("#job-search", "resnet8 KD")  # every word, ignoring case, in any column
    expect(names).to_have_text(["kd"])
    queue.fill("#job-search", "alice running")
    expect(names).to_have_text(["ttm", "wttm"])
    queue.fill("#job-search", "no-such-thing")
    expect(queue.locator("#jobs")).to_contain_text("No job matches the search.")
    queue.fill("#job-search", "")
    expect(names).to_have_count(3)
    queue.reload()  # the sort is kept in the address
    expect(names).to_have_text(["kd", "ttm", "wttm"])

    # selecting jobs leads to the comparison
    for job in jobs:
        queue.locator(f'tr[data-job-id="{job["id"]}"] input[type=checkbox]').check()
    queue.click("#compare-selected")
    expect(queue).to_have_url(re.compile(r"/ui/compare\?jobs="))
    page = queue
    top1 = _points(page, "test/top1")
    expect(top1).to_have_count(3)
    for job in jobs:
        expect(page.locator(f'figure[data-metric="test/top1"] path[data-series="{job["id"]}"]')).to_have_attribute(
            "data-points", "2")
    # one legend for all the charts, none on each
    legend = page.locator("#compare-legend li")
    expect(legend).to_have_count(3)
    for kind in ("KD", "TTM", "WTTM"):
        expect(legend.filter(has_text=re.compile(rf"· {kind}\b"))).to_have_count(1)
    expect(page.locator("figure .legend li")).to_have_count(0)
    # the parameters that differ (not those all three share), then the final metrics
    params = page.locator("#compare-params tr[data-param]")
    expect(params.locator("th")).to_have_text(["loss.beta", "loss.ce_weight", "loss.gamma", "loss.kd_weight",
                                               "loss.kind", "loss.temperature"])
    expect(page.locator("#compare-params thead th[data-job-id]")).to_have_count(3)
    expect(page.locator('#compare-params tr[data-param="loss.gamma"] td')).to_have_text(["–", "0.3", "0.5"])
    expect(page.locator('#compare-params tr[data-metric="test/top1"] td')).to_have_text(["52", "53", "54"])
    expect(page.locator('#compare-params tr[data-metric="epochs"] td')).to_have_text(["2 / 3"] * 3)
    page.check("#compare-all")
    expect(page.locator('#compare-params tr[data-param="train.lr"]')).to_have_count(1)
    # the three teachers are one: one reference line; the x axis runs to the planned 3 epochs
    expect(page.locator('figure[data-metric="test/top1"] line.reference')).to_have_count(1)
    expect(page.locator('figure[data-metric="test/top1"]')).to_have_attribute("data-x-max", "3")
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
    assert _pixels(_chart_shot(page, "test/top1", tmp_path), SERIES_BLUE) > 100

    # a running job's new epoch appears without a reload
    add_metrics(api.settings, ttm, 3, {"test/top1": 60.0})
    expect(page.locator(f'figure[data-metric="test/top1"] path[data-series="{ttm}"]')).to_have_attribute(
        "data-points", "3", timeout=10_000)


def test_live_job_curve_grows_and_cancel(live, open_page, tmp_path):
    """A real worker trains the job: the top-1 curve grows epoch by epoch, with the trainer's ETA and its log as it
    writes it, then the cancel button stops it."""
    with Client(live.url, live.alice) as c:
        job = c.submit(digits_spec("live-dashboard", epochs=200))
    page = open_page(f"{live.url}/ui/jobs/{job['id']}", live.alice)
    top1 = page.locator('figure[data-metric="test/top1"]')
    expect(top1).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"), timeout=60_000)
    first = int(top1.get_attribute("data-points"))
    grown = "n => Number(document.querySelector('figure[data-metric=\"test/top1\"]').dataset.points) > n"
    page.wait_for_function(grown, arg=first, timeout=60_000)
    expect(page.locator("#job-state [data-state]")).to_have_text("running")
    expect(top1).to_have_attribute("data-x-max", "200")  # the planned epochs
    expect(page.locator("#progress-epoch")).to_have_text(re.compile(r"^Epoch [1-9]\d* / 200$"))
    expect(page.locator("#progress-eta")).to_have_text(re.compile(r"^ETA \d+:\d\d:\d\d · running"))
    expect(page.locator("#log .log-line").filter(has_text=re.compile(r"epoch 1/200 +loss"))).to_have_count(1)
    page.screenshot(path=str(tmp_path / "live-job.png"), full_page=True)
    assert _pixels(_chart_shot(page, "test/top1", tmp_path), SERIES_BLUE) > 30
    page.click("#cancel")
    expect(page.locator("#job-state [data-state]")).to_have_text("cancelled", timeout=30_000)
    assert Client(live.url, live.alice).job(job["id"])["state"] == "cancelled"
    expect(page.locator('#checkpoints button[data-which="last"]')).to_have_count(2)  # pt and safetensors


def test_a_real_sweep_its_list_page_scatter_trials_and_student(live, open_page, tmp_path):
    """A grid of 2 over β, trained by the real worker and driven by the reconciler's sweep pass: the list shows it,
    its page shows both trials linking to their jobs, the scatter has their 2 points with the best one circled, the
    student downloads, a trial's job page links back, and the sweep's name, HTML, stays text."""
    from service.broker import enqueue_job, make_celery
    from service.sweeps import drive_all

    job = {**digits_spec("unused", epochs=1), "teacher": {"zoo": "digits/resnet20"},
           "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.0}}
    body = {"name": XSS, "strategy": "grid", "max_running": 2, "space": {"loss.beta": [0.5, 2.0]}, "job": job}
    http = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {live.alice}"}, timeout=60)
    r = http.post("/v1/sweeps", json=body)
    assert r.status_code == 201, r.text
    sweep_id = r.json()["id"]

    page = open_page(f"{live.url}/ui/sweeps/{sweep_id}", live.alice)
    expect(page.locator("#sweep-name")).to_have_text(XSS)
    expect(page.locator("#sweep-state [data-state]")).to_have_text("running")
    expect(page.locator("#cancel-sweep")).to_be_visible()
    expect(page.locator("#space th")).to_have_text(["loss.beta"])
    expect(page.locator("#space td")).to_have_text(["0.5, 2"])

    celery = make_celery(live.settings)  # the reconciler's pass (`ttm serve` runs it; the live stack does not)

    def ended() -> bool:
        drive_all(live.settings, lambda job_id, queue: enqueue_job(job_id, queue, celery))
        return http.get(f"/v1/sweeps/{sweep_id}").json()["state"] != "running"

    wait_for(ended, 120, "the sweep to end", interval=0.5)
    done = http.get(f"/v1/sweeps/{sweep_id}").json()
    assert done["state"] == "succeeded", done
    best = done["best"]
    # the page follows the sweep to its end without a reload
    expect(page.locator("#sweep-state [data-state]")).to_have_text("succeeded", timeout=10_000)
    expect(page.locator("#cancel-sweep")).to_be_hidden()
    rows = page.locator("#trials tr[data-trial]")
    expect(rows).to_have_count(2)
    for t in done["trials"]:
        row = page.locator(f'#trials tr[data-trial="{t["number"]}"]')
        expect(row.locator("a")).to_have_attribute("href", f"/ui/jobs/{t['job_id']}")
        expect(row.locator("[data-state]")).to_have_text("complete")
        expect(row.locator(".epochs")).to_have_text("1")
    expect(page.locator("#trials tr.best")).to_have_attribute("data-trial", str(best["number"]))
    expect(page.locator("#best-value")).to_contain_text(f"{best['value']:.2f}")
    expect(page.locator("#best-top1")).to_contain_text(f"{best['test_top1']:.2f}")

    scatter = page.locator("#scatter")
    expect(scatter).to_have_attribute("data-points", "2")
    expect(scatter).to_have_attribute("data-x-field", "loss.beta")  # one searched field: β against the metric
    expect(scatter).to_have_attribute("data-y-field", "val/top1")
    points = scatter.locator("a.point")
    expect(points).to_have_count(2)
    marked = scatter.locator('a.point[data-best="true"]')
    expect(marked).to_have_count(1)
    expect(marked.locator("circle.best-mark")).to_have_count(1)
    expect(marked).to_have_attribute("href", f"/ui/jobs/{best['job_id']}")
    expect(marked.locator("title")).to_contain_text(f"loss.beta = {best['params']['loss.beta']:g}")
    cy = {int(points.nth(i).get_attribute("data-trial")): float(points.nth(i).locator("circle.mark")
                                                                .get_attribute("cy")) for i in range(2)}
    low, high = sorted(done["trials"], key=lambda t: t["value"])
    assert low["value"] == high["value"] or cy[high["number"]] < cy[low["number"]]  # higher up (SVG y grows down)
    assert page.locator("main img").count() == 0 and page.evaluate("document.body.dataset.pwned") is None
    page.screenshot(path=str(tmp_path / "sweep.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#download-best")
    got = open(download.value.path(), "rb").read()
    assert download.value.suggested_filename == f"{sweep_id}-best.safetensors"
    want = http.get(f"/v1/sweeps/{sweep_id}/checkpoints/best?format=safetensors", follow_redirects=True)
    assert want.status_code == 200 and got == want.content

    # a trial's job page says whose trial it is; the navigation leads back to the list, which shows the sweep
    marked.click()
    expect(page).to_have_url(f"{live.url}/ui/jobs/{best['job_id']}")
    link = page.locator("#job-sweep a")
    expect(link).to_have_text(XSS)
    expect(link).to_have_attribute("href", f"/ui/sweeps/{sweep_id}")
    expect(page.locator("#job-sweep")).to_contain_text(f"Trial {best['number']} of sweep")
    page.click("#nav-sweeps")
    row = page.locator(f'#sweeps tr[data-sweep-id="{sweep_id}"]')
    expect(row.locator("a")).to_have_text(XSS)
    expect(row.locator("a")).to_have_attribute("href", f"/ui/sweeps/{sweep_id}")
    expect(row.locator("[data-state]")).to_have_text("succeeded")
    expect(row.locator(".trials")).to_have_text("2 / 2")
    expect(row.locator(".best")).to_contain_text(f"{best['value']:.2f}")
    expect(row.locator(".top1")).to_have_text(f"{best['test_top1']:.2f} %")
    expect(page.locator("#nav-sweeps")).to_have_class(re.compile("active"))
    assert page.locator("main img").count() == 0 and page.evaluate("document.body.dataset.pwned") is None
    http.close()


def test_a_sweep_over_two_fields_plots_them_on_a_log_axis_and_cancels(api, open_page):
    """γ and β as the scatter's axes (β log-uniform: a log axis) while the trials wait in the queue (no worker here),
    then the page's Cancel button cancels the sweep and its trials."""
    job = {**digits_spec("unused", epochs=1), "teacher": {"zoo": "digits/resnet20"},
           "loss": {"kind": "wttm", "gamma": 0.3, "beta": 1.0}}
    body = {"name": "gamma-beta", "strategy": "random", "trials": 4, "max_running": 2, "job": job,
            "space": {"loss.beta": {"log_uniform": [0.5, 100]}, "loss.gamma": {"uniform": [0.1, 0.8]}}}
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.alice}"}, timeout=60) as http:
        r = http.post("/v1/sweeps", json=body)
        assert r.status_code == 201, r.text
        sweep = r.json()
        page = open_page(f"{api.url}/ui/sweeps/{sweep['id']}", api.alice)
        scatter = page.locator("#scatter")
        expect(scatter).to_have_attribute("data-points", "2")  # max_running: two trials asked so far
        expect(scatter).to_have_attribute("data-x-field", "loss.beta")
        expect(scatter).to_have_attribute("data-x-scale", "log")
        expect(scatter).to_have_attribute("data-y-field", "loss.gamma")
        expect(scatter.locator(".x-tick")).to_have_text(["0.5", "1", "2", "5", "10", "20", "50", "100"])
        expect(scatter.locator('a.point[data-state="running"]')).to_have_count(2)
        expect(scatter.locator(".best-mark")).to_have_count(0)
        expect(page.locator("#space td")).to_have_text(["log-uniform 0.5 … 100", "uniform 0.1 … 0.8"])
        expect(page.locator("#best")).to_contain_text("Chosen when the sweep ends.")
        page.click("#cancel-sweep")  # the dialog is accepted by the fixture
        expect(page.locator("#sweep-state [data-state]")).to_have_text("cancelled")
        expect(page.locator("#sweep-reason")).to_have_text("cancelled by alice")
        expect(page.locator("#cancel-sweep")).to_be_hidden()
        expect(page.locator("#trials td [data-state]")).to_have_text(["failed", "failed"])
        for t in sweep["trials"]:
            assert http.get(f"/v1/jobs/{t['job_id']}").json()["state"] == "cancelled"
