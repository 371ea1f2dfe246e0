// Browser test of the search page: Debian's chromium driven by playwright-core (headless).
//   node tests/browser/search.mjs --url http://127.0.0.1:PORT --out DIR
// Needs playwright-core under $CLIPEDGE_PLAYWRIGHT_DIR/node_modules (scripts/test.sh installs it
// into ~/.cache/clipedge/npm-browser) and /usr/bin/chromium. Exits 1 on any failed check.
import { createRequire } from "node:module";
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir, homedir } from "node:os";
import { join } from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
);
const base = args.url;
const outDir = args.out || "test-artifacts";
if (!base) {
  console.error("usage: node tests/browser/search.mjs --url BASE [--out DIR]");
  process.exit(2);
}
const playwrightDir = process.env.CLIPEDGE_PLAYWRIGHT_DIR || join(homedir(), ".cache/clipedge/npm-browser");
const require = createRequire(join(playwrightDir, "node_modules", "noop.js"));
const { chromium } = require("playwright-core");
const executablePath = process.env.CLIPEDGE_CHROMIUM || "/usr/bin/chromium";

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok: ${message}`);
}

mkdirSync(outDir, { recursive: true });
const userDataDir = mkdtempSync(join(tmpdir(), "clipedge-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run"],
  viewport: { width: 1200, height: 900 },
  acceptDownloads: true,
});
let failed = false;
try {
  const page = context.pages()[0] || (await context.newPage());
  const consoleErrors = [];
  const failedResponses = [];
  // Failed loads are checked by URL below (the unknown-id step expects its 404s).
  page.on("console", (message) => {
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) consoleErrors.push(message.text());
  });
  page.on("response", (response) => {
    const expected = `${response.url()} ${response.request().postData() || ""}`.includes("987654321");
    if (response.status() >= 400 && !expected) failedResponses.push(`${response.status()} ${response.url()}`);
  });
  page.on("pageerror", (error) => consoleErrors.push(String(error)));

  await page.goto(`${base}/`);
  await page.waitForFunction(() => document.getElementById("label").textContent.includes("images"));
  check((await page.textContent("#label")).includes("caption embeddings"), "the page says what the demo model embeds");

  // Type a query; results render with loaded images, scores and captions.
  await page.fill("#q", "a horse");
  await page.press("#q", "Enter");
  await page.waitForSelector("#results .result img");
  await page.waitForFunction(() => {
    const images = [...document.querySelectorAll("#results .result img")].slice(0, 8);
    return images.length >= 8 && images.every((img) => img.complete && img.naturalWidth > 0);
  });
  const count = await page.locator("#results .result").count();
  check(count === 20, `20 results rendered for the default k (got ${count})`);
  const captions = await page.locator("#results .caption").allTextContents();
  check(captions.slice(0, 10).some((caption) => /horse|cavallo/i.test(caption)), "a horse is among the first 10 captions");
  check((await page.locator("#results .score").first().textContent()).includes("score"), "scores are shown");
  check(!(await page.isVisible("#similar")), "no \"more like\" banner on a text search");
  check(new URL(page.url()).searchParams.get("q") === "a horse", `the query is in the URL (${page.url()})`);
  const stats = await page.textContent("#stats");
  check(/encode .* ms/.test(stats) && /GETs/.test(stats), `the latency breakdown and GETs are shown (${stats})`);
  await page.screenshot({ path: join(outDir, "search.png"), fullPage: false });

  // "Download JSON": the shown results with ids, URLs, captions and scores.
  const downloaded = async () => {
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
    check(download.suggestedFilename() === "clipedge-results.json", `the download is named (${download.suggestedFilename()})`);
    return JSON.parse(readFileSync(await download.path(), "utf8"));
  };
  const saved = await downloaded();
  check(saved.results.length === 20 && saved.query.text === "a horse" && typeof saved.generation === "string",
    `the download holds the 20 shown results, the query and the generation (${saved.results.length})`);
  const shownIds = await page.locator("#results .result button").evaluateAll((buttons) => buttons.map((b) => Number(b.dataset.id)));
  check(JSON.stringify(saved.results.map((item) => item.id)) === JSON.stringify(shownIds), "in the order shown");
  check(saved.results.every((item) => ["id", "url", "caption", "score"].every((key) => key in item) && item.url.startsWith("http")),
    "each result has id, an absolute URL, caption and score");

  // Up to 1,000 results: images past the first screenful load lazily.
  await page.selectOption("#k", "1000");
  await page.waitForFunction(() => document.querySelectorAll("#results .result").length === 1000, null, { timeout: 60000 });
  check(new URL(page.url()).searchParams.get("k") === "1000", "k=1000 is in the URL");
  const loading = await page.locator("#results .result img").evaluateAll((images) => images.map((img) => img.loading));
  check(loading.slice(0, 12).every((mode) => mode === "eager") && loading.slice(12).every((mode) => mode === "lazy"),
    "images past the first 12 load lazily");
  const lastSrc = await page.locator("#results .result img").last().getAttribute("src");
  const fetchedLast = await page.evaluate((src) => performance.getEntriesByType("resource").some((entry) => entry.name.endsWith(src)), lastSrc);
  check(!fetchedLast, "the last image is not fetched before it is scrolled to");
  const savedLarge = await downloaded();
  check(savedLarge.results.length === 1000, `the download holds the 1,000 results (${savedLarge.results.length})`);

  // k selector: the URL and the grid follow.
  await page.selectOption("#k", "10");
  await page.waitForFunction(() => document.querySelectorAll("#results .result").length === 10);
  check(new URL(page.url()).searchParams.get("k") === "10", "k is in the URL");

  // Click a result: "more like this" searches by its id.
  const first = page.locator("#results .result button").first();
  const clickedId = await first.getAttribute("data-id");
  await first.click();
  await page.waitForFunction((id) => new URL(location.href).searchParams.get("id") === id, clickedId);
  await page.waitForSelector("#similar:not([hidden])");
  await page.waitForFunction((id) => document.querySelector("#results .result button")?.dataset.id === id, clickedId);
  check(true, `"more like this" for id ${clickedId} puts it first and keeps k=10 (${page.url()})`);
  check(new URL(page.url()).searchParams.get("k") === "10", "k survives the click");
  await page.screenshot({ path: join(outDir, "more-like-this.png") });

  // Back restores the text search from the URL.
  await page.goBack();
  await page.waitForFunction(() => document.getElementById("q").value === "a horse");
  check(!new URL(page.url()).searchParams.has("id"), "Back returns to the text search");

  // Keyboard: "/" returns to the search box; Tab reaches a result.
  await page.locator("#results .result button").first().focus();
  await page.keyboard.press("/");
  check(await page.evaluate(() => document.activeElement.id === "q"), '"/" focuses the search box');

  // A shared link with an unknown id shows the API's reason.
  await page.goto(`${base}/?id=987654321`);
  await page.waitForSelector("#error:not([hidden])");
  check((await page.textContent("#error")).includes("unknown_id"), "an unknown id shows a clear error");

  // Phone screen, dark scheme.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.goto(`${base}/?q=${encodeURIComponent("a red apple")}`);
  await page.waitForSelector("#results .result img");
  const columns = await page.evaluate(() => getComputedStyle(document.getElementById("results")).gridTemplateColumns.split(" ").length);
  check(columns === 2, `two columns on a phone screen (got ${columns})`);
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  check(background === "rgb(21, 23, 27)", `dark scheme applies (${background})`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  check(!overflow, "nothing overflows the phone screen horizontally");
  await page.screenshot({ path: join(outDir, "phone-dark.png") });

  check(consoleErrors.length === 0, `no console errors (${consoleErrors.join("; ")})`);
  check(failedResponses.length === 0, `no failed requests besides the unknown id (${failedResponses.join("; ")})`);
} catch (error) {
  failed = true;
  console.error(String(error && error.stack ? error.stack : error));
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
