// The dashboard in Debian's Chromium, against the hub and agents simulations/ui/run.sh started:
// eu-1, eu-2 (region=eu), us-1 (region=us) Ready; us-2 (region=us) waiting for approval; an
// admin and a viewer credential. Exits non-zero on the first failed check.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const { HUB_URL, ADMIN_CERT, ADMIN_KEY, VIEWER_CERT, VIEWER_KEY, SHOTS } = process.env;
for (const [k, v] of Object.entries({ HUB_URL, ADMIN_CERT, ADMIN_KEY, VIEWER_CERT, VIEWER_KEY, SHOTS })) {
  if (!v) throw new Error(`${k} is not set (run simulations/ui/run.sh)`);
}
const WORK = "web";
const step = (what) => console.log(`== ${what}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// No network beyond loopback on CI: Chromium's own background connections are switched off.
// Playwright gives the browser a fresh, empty profile directory of its own.
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const failures = [];

async function contextFor(certPath, keyPath) {
  const ctx = await browser.newContext({
    clientCertificates: [{ origin: HUB_URL, certPath, keyPath }],
    // The hub's serving certificate is signed by the hub's own CA, which Chromium does not know.
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 860 },
  });
  // Nothing may leave for another host: the page is meant to be self-contained.
  ctx.on("request", (req) => {
    if (!req.url().startsWith(HUB_URL)) failures.push(`request to another host: ${req.url()}`);
  });
  return ctx;
}

async function open(ctx, hash) {
  const page = await ctx.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.log(`   browser: ${m.text()}`); });
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  const resp = await page.goto(`${HUB_URL}/ui/${hash}`);
  assert.equal(resp.status(), 200);
  assert.equal(resp.headers()["content-security-policy"]?.startsWith("default-src 'self'"), true);
  await page.waitForSelector("body[data-loaded=true]", { timeout: 15000 });
  return page;
}

const count = async (page, state) =>
  Number(await page.locator(`[data-testid=count-${state}] .n`).textContent());

// Polls `read` until `ok` holds of its value; the last value is in the failure message.
async function until(what, read, ok, ms = 30000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await read();
    if (ok(last)) return last;
    await sleep(250);
  }
  throw new Error(`${what}: not within ${ms} ms (last: ${JSON.stringify(last)})`);
}

async function forced(page, method, path) {
  return page.evaluate(async ([m, p]) => (await fetch(p, { method: m, headers: { "content-type": "application/json" }, body: "{}" })).status, [method, path]);
}

try {
  const admin = await contextFor(ADMIN_CERT, ADMIN_KEY);
  const viewer = await contextFor(VIEWER_CERT, VIEWER_KEY);

  step("without a client certificate: nothing");
  {
    const anon = await browser.newContext({ ignoreHTTPSErrors: true });
    const p = await anon.newPage();
    const r = await p.goto(`${HUB_URL}/ui/`);
    assert.equal(r.status(), 401);
    assert.equal((await p.content()).includes("Tether fleet"), false);
    await anon.close();
  }

  step("overview: counts by state, region and zone");
  const page = await open(admin, "#/");
  await until("3 Ready", () => count(page, "Ready"), (n) => n === 3);
  assert.equal(await count(page, "Pending"), 1);
  assert.equal(await count(page, "Denied"), 0);
  assert.equal(await count(page, "Offline"), 0);
  const byRegion = await page.locator("[data-testid=by-region] li").allTextContents();
  assert.deepEqual(byRegion.map((s) => s.replace(/\s+/g, " ").trim()), ["eu 2", "us 1"]);
  const byZone = await page.locator("[data-testid=by-zone] li").count();
  assert.equal(byZone, 3);
  assert.equal(await page.locator("[data-testid=clusters] tbody tr").count(), 3);
  // The three joined minutes ago: each changed state within the hour.
  await until("recent changes", () => page.locator("[data-testid=recent-changes] tbody tr[data-row]").count(), (n) => n === 3);
  await page.screenshot({ path: `${SHOTS}/overview.png`, fullPage: true });

  step("overview: filter by label");
  await page.click("[data-label='region=eu'] a");
  await until("two eu rows", () => page.locator("[data-testid=clusters] tbody tr").count(), (n) => n === 2);
  const rows = await page.locator("[data-testid=clusters] tbody tr").evaluateAll((trs) => trs.map((t) => t.dataset.row).sort());
  assert.deepEqual(rows, ["eu-1", "eu-2"]);
  assert.equal(await count(page, "Pending"), 0, "us-2 is outside region=eu");

  step("a viewer sees the pending request, cannot press approve, and a forced approve is refused");
  const vpage = await open(viewer, "#/joins");
  await vpage.waitForSelector("[data-testid=approve-us-2]");
  assert.equal(await vpage.isDisabled("[data-testid=approve-us-2]"), true);
  assert.equal(await vpage.isDisabled("[data-testid=deny-us-2]"), true);
  assert.equal(await forced(vpage, "POST", "/v1/clusters/us-2/approve"), 403);
  assert.equal((await vpage.locator("#whoami").textContent()).includes("viewer"), true);

  step("a progressive rollout moves on the work page as clusters apply");
  const work = {
    apiVersion: "tether.dev/v1alpha1", kind: "Work", metadata: { name: WORK },
    spec: {
      targets: { selector: {} },
      rollout: { strategy: "Progressive", maxConcurrency: 1, minSuccessSeconds: 2 },
      manifests: [{ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "web", namespace: "default" }, data: { v: "1" } }],
    },
  };
  const applied = await page.evaluate(async (doc) => {
    const r = await fetch("/v1/works", { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify(doc) });
    return r.status;
  }, work);
  assert.equal(applied, 201);
  await page.goto(`${HUB_URL}/ui/#/work/${WORK}`);
  await page.waitForSelector("[data-testid=rollout-progress]");
  await page.evaluate(() => { window.notReloaded = true; });
  const seen = new Set();
  let midShot = false;
  const done = await until("rollout done on 3", async () => {
    const v = Number(await page.locator("[data-testid=rollout-progress]").getAttribute("value"));
    const max = Number(await page.locator("[data-testid=rollout-progress]").getAttribute("max"));
    seen.add(v);
    if (!midShot && v > 0 && v < max) {
      midShot = true;
      await page.screenshot({ path: `${SHOTS}/work-progressing.png`, fullPage: true });
    }
    return { v, max };
  }, ({ v, max }) => max === 3 && v === 3, 60000);
  assert.equal(done.v, 3);
  console.log(`   progress bar values seen while polling: ${[...seen].join(" -> ")}`);
  assert.ok(seen.size >= 3, `progress seen at ${[...seen]}: expected it to move through steps`);
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the page reloaded");
  await until("phase on every cluster", () => page.locator("[data-testid=phase]").allTextContents(),
    (p) => p.length === 3 && p.every((x) => x === "Applied" || x === "Available"));
  const placement = await page.locator("[data-testid=placement] tbody tr").allTextContents();
  assert.equal(placement.length, 3);
  assert.ok(placement.every((t) => t.includes("selected")), placement.join(" | "));
  await page.screenshot({ path: `${SHOTS}/work.png`, fullPage: true });

  step("pause and resume from the page (operator)");
  await page.click("[data-testid=pause]");
  await until("paused", () => page.locator("[data-testid=rollout-phase]").textContent(), (t) => t === "Paused");
  await page.click("[data-testid=resume]");
  await until("resumed", () => page.locator("[data-testid=rollout-phase]").textContent(), (t) => t !== "Paused");

  step("undo from the page (operator, after a confirmation): a new generation restores the old one");
  work.spec.manifests[0].data.v = "2";
  assert.equal(await page.evaluate(async (doc) => (await fetch("/v1/works", {
    method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify(doc) })).status, work), 200);
  await page.waitForSelector("[data-testid=undo]");
  page.once("dialog", (d) => d.accept());
  await page.click("[data-testid=undo]");
  await until("generation 3", () => page.locator("h2").textContent(), (t) => t.includes("generation 3"));
  const restored = await page.evaluate(async (name) => (await (await fetch(`/v1/works/${name}`)).json()), WORK);
  assert.equal(restored.document.spec.manifests[0].data.v, "1", "undo restores generation 1's manifests");

  step("a viewer cannot pause");
  await vpage.goto(`${HUB_URL}/ui/#/work/${WORK}`);
  await vpage.waitForSelector("[data-testid=pause]");
  assert.equal(await vpage.isDisabled("[data-testid=pause]"), true);
  assert.equal(await forced(vpage, "POST", `/v1/works/${WORK}/pause`), 403);

  step("a cluster page: labels, facts, conditions, the work it holds");
  await page.goto(`${HUB_URL}/ui/#/cluster/eu-1`);
  await page.waitForSelector("[data-testid=cluster-name]");
  const labels = await page.locator("[data-testid=labels] tbody tr").allTextContents();
  assert.ok(labels.includes("regioneu") && labels.includes("zoneeu-a"), labels.join(" | "));
  assert.ok((await page.locator("[data-testid=facts]").textContent()).includes("arch"));
  await until("work row on eu-1", () => page.locator("[data-testid=cluster-works] tbody tr").allTextContents(),
    (r) => r.length === 1 && r[0].startsWith(WORK) && /Applied|Available/.test(r[0]));
  const sessions = await page.locator("[data-testid=sessions] tbody tr").allTextContents();
  assert.ok(sessions.length >= 1 && sessions[sessions.length - 1].includes("open"), sessions.join(" | "));
  const audit = await page.locator("[data-testid=cluster-audit] tbody tr").allTextContents();
  assert.ok(audit.some((r) => r.includes("join_requested")), audit.join(" | "));
  await page.screenshot({ path: `${SHOTS}/cluster.png`, fullPage: true });

  step("approve from the page: us-2 joins and the overview counts it");
  await page.goto(`${HUB_URL}/ui/#/joins`);
  await page.waitForSelector("[data-testid=approve-us-2]");
  await page.screenshot({ path: `${SHOTS}/joins.png`, fullPage: true });
  await page.click("[data-testid=approve-us-2]");
  await until("us-2 no longer pending", () => page.locator("[data-testid=approve-us-2]").count(), (n) => n === 0);
  await page.goto(`${HUB_URL}/ui/#/`);
  await until("4 Ready, 0 Pending", async () => [await count(page, "Ready"), await count(page, "Pending")],
    ([r, p]) => r === 4 && p === 0, 60000);
  const regions = await page.locator("[data-testid=by-region] li").allTextContents();
  assert.deepEqual(regions.map((s) => s.replace(/\s+/g, " ").trim()), ["eu 2", "us 2"]);

  step("a cross-site form post is refused even though the browser sends the admin certificate");
  {
    // 127.0.0.1 and localhost are two sites to the browser; the context presents the admin
    // certificate to both, as a browser with the certificate installed would.
    const other = HUB_URL.replace("localhost", "127.0.0.1");
    const csrf = await browser.newContext({
      clientCertificates: [{ origin: HUB_URL, certPath: ADMIN_CERT, keyPath: ADMIN_KEY },
        { origin: other, certPath: ADMIN_CERT, keyPath: ADMIN_KEY }],
      ignoreHTTPSErrors: true,
    });
    const p = await csrf.newPage();
    await p.goto(`${other}/healthz`);
    const [resp] = await Promise.all([
      p.waitForNavigation(),
      p.evaluate((target) => {
        const f = document.createElement("form");
        f.method = "POST";
        f.action = `${target}/v1/clusters/us-2/deny`;
        document.body.append(f);
        f.submit();
      }, HUB_URL),
    ]);
    assert.equal(resp.status(), 403, await p.content());
    assert.ok((await p.content()).includes("Sec-Fetch-Site"));
    await csrf.close();
    const state = await until("us-2 still Ready", async () => {
      const r = await page.evaluate(async () => (await fetch("/v1/clusters/us-2")).json());
      return r.state;
    }, (st) => st === "Ready");
    assert.equal(state, "Ready");
  }

  await admin.close();
  await viewer.close();
} catch (e) {
  failures.push(e.stack || String(e));
} finally {
  await browser.close();
}

if (failures.length) {
  console.error(`FAILED:\n${failures.join("\n")}`);
  process.exit(1);
}
console.log("all dashboard checks passed");
