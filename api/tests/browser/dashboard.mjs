// Drives the ops dashboard in Debian's headless Chromium, as an admin would:
// sign in, find the failed task, retry it and watch it complete, see a live
// worker, disable a schedule. Started by api/tests/api/dashboard.rs, which
// prepares the stack and passes what to look for in the environment, then
// checks the database after this script exits 0. Screenshots go to
// KEEL_ARTIFACTS.
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("KEEL_URL");
const artifacts = env("KEEL_ARTIFACTS");
const taskId = env("KEEL_TASK_ID");
const workerId = env("KEEL_WORKER_ID");
const schedule = env("KEEL_SCHEDULE");

const step = (what) => console.log(`ok: ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  // The machine has no outside network: background fetches would only fail.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const problems = [];
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
try {
  page.setDefaultTimeout(15_000);
  // A CSP violation or a failed asset shows up as a console error.
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(e.message));

  await page.goto(`${url}/dashboard/tasks?status=failed`);
  await page.waitForURL(/\/dashboard\/login\?next=/);
  step("an anonymous visitor is sent to the sign-in page");

  await page.fill("input[name=username_or_email]", env("KEEL_USERNAME"));
  await page.fill("input[name=password]", env("KEEL_PASSWORD"));
  await page.click("button[type=submit]");
  await page.waitForURL(`${url}/dashboard/tasks?status=failed`);
  step("signed in and back on the failed tasks");

  const row = page.locator(`tr[data-task-id="${taskId}"]`);
  await row.locator(".status.failed").waitFor();
  step("the failed task is listed");
  await row.locator("a").click();
  await page.locator("#task-error").waitFor();
  await page.getByRole("button", { name: "Retry" }).click();
  await page.getByRole("status").filter({ hasText: "retried" }).waitFor();
  // The page refreshes itself every 2 s while the task may still change.
  await page.locator("h1 .status.completed").waitFor({ timeout: 30_000 });
  await page.locator("#task-result").waitFor();
  step("Retry ran the task again and the page shows it completed");
  await page.screenshot({ path: `${artifacts}/dashboard-task.png`, fullPage: true });

  await page.getByRole("link", { name: "Workers" }).click();
  const worker = page.locator(`tr[data-worker-id="${workerId}"]`);
  await worker.locator(".status", { hasText: "alive" }).waitFor();
  step("the worker is listed alive");

  await page.getByRole("link", { name: "Schedules" }).click();
  const scheduleRow = page.locator(`tr[data-schedule="${schedule}"]`);
  await scheduleRow.getByRole("button", { name: "Disable" }).click();
  await page.locator(`tr[data-schedule="${schedule}"] td.enabled`, { hasText: "no" }).waitFor();
  await page.locator(`tr[data-schedule="${schedule}"]`).getByRole("button", { name: "Enable" }).waitFor();
  step("the schedule is disabled");

  await page.getByRole("link", { name: "Overview" }).click();
  await page.locator("#queues").waitFor();
  await page.locator("svg.chart rect.completed").first().waitFor({ state: "attached" });
  const alive = Number(await page.locator("#workers-alive").innerText());
  if (!(alive >= 1)) throw new Error(`the overview shows ${alive} workers alive`);
  step(`the overview shows ${alive} worker(s) alive and the throughput chart`);
  await page.screenshot({ path: `${artifacts}/dashboard-overview.png`, fullPage: true });

  if (problems.length) throw new Error(`the browser reported errors:\n${problems.join("\n")}`);
  step("no console errors");
} catch (e) {
  // Where it stopped, for whoever reads the failure.
  console.log(`failed at ${page.url()}`);
  console.log((await page.locator("main").innerText().catch(() => "")).slice(0, 2000));
  await page.screenshot({ path: `${artifacts}/dashboard-failure.png`, fullPage: true }).catch(() => {});
  throw e;
} finally {
  await browser.close();
}
