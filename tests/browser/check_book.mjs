#!/usr/bin/env node
// Headless check of the built book, as a reader with no network would see it.
//
//   node tests/browser/check_book.mjs HTML_DIR [--screenshots DIR] [--home URL] [--branch NAME]
//                                               [--config _config.yml] [--pages GLOB-ish substring]
//                                               [--layout WxH[,WxH...]]
//
// Serves HTML_DIR on 127.0.0.1 (a tiny static server, here), opens every page under book/ with Debian's
// Chromium through playwright-core, and for each page checks that
//   - no request leaves 127.0.0.1 (all others are blocked and recorded: any one fails the page), no local
//     file is missing, and no <script src> / stylesheet points off-site;
//   - MathJax (served by the site itself) typeset every piece of math, with no TeX error;
//   - every player (matplotlib to_jshtml, `.animation`) advances its frame when "Next frame" is clicked, and
//     every chapter of Parts I and II has at least one;
//   - a page built from a notebook has a Colab launch link to exactly
//     https://colab.research.google.com/github/<owner>/<repo>/blob/<branch>/<the page's .ipynb path>;
//   - there is no console error and no uncaught exception;
//   - at each --layout viewport (default 1280x800), every display equation, every player and every image or
//     figure in the article fits its text column: its natural width (what MathJax typeset, or the scroll
//     width of a box that scrolls or clips its content) is at most the width of the box it sits in and of
//     the article's column (article.bd-article, less its padding), within LAYOUT_SLACK_PX, and it lies
//     inside that column. Hidden content (code-cell <details>, toggled solutions) is opened first;
// and saves a full-page screenshot of each page. Prints one line per page, then `N passed, N failed`,
// and exits 1 when any page failed (2 on bad usage).
import { chromium } from "playwright-core";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run",
];
const PAGE_TIMEOUT_MS = 60_000;
// Viewport(s) at which equations, players and figures must fit the text column, and the slack allowed (px).
const LAYOUT_VIEWPORTS = "1280x800";
const LAYOUT_SLACK_PX = 2;

function usage(msg) {
  console.error(`check_book: ${msg}`);
  console.error("usage: node tests/browser/check_book.mjs HTML_DIR [--screenshots DIR] [--home URL] [--branch NAME] [--config FILE] [--pages SUBSTRING] [--layout WxH[,WxH...]]");
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { screenshots: null, home: null, branch: null, config: "_config.yml", pages: null, layout: LAYOUT_VIEWPORTS };
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const key = a.startsWith("--") ? a.slice(2) : null;
    if (key && key in opts) {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      opts[key] = argv[++i];
    } else if (key) usage(`unknown option ${a}`);
    else rest.push(a);
  }
  if (rest.length !== 1) usage("give exactly one HTML_DIR");
  opts.viewports = opts.layout.split(",").map((v) => {
    const m = v.trim().match(/^(\d+)x(\d+)$/);
    if (!m) usage(`--layout wants WIDTHxHEIGHT[,WIDTHxHEIGHT...], got ${opts.layout}`);
    return { width: Number(m[1]), height: Number(m[2]) };
  });
  opts.root = path.resolve(rest[0]);
  if (!fs.existsSync(path.join(opts.root, "index.html"))) usage(`${opts.root} has no index.html: build the book first`);
  return opts;
}

// The repository's home and branch, from _config.yml (repository: url / branch), unless given.
function repoFromConfig(opts) {
  let home = opts.home, branch = opts.branch;
  if ((!home || !branch) && fs.existsSync(opts.config)) {
    const text = fs.readFileSync(opts.config, "utf8");
    const block = text.match(/^repository:\s*\n((?:[ \t]+.*\n?)+)/m);
    if (block) {
      const url = block[1].match(/^\s+url:\s*["']?([^\s"'#]+)/m);
      const br = block[1].match(/^\s+branch:\s*["']?([^\s"'#]+)/m);
      if (!home && url) home = url[1];
      if (!branch && br) branch = br[1];
    }
  }
  if (!home) usage("no repository url: pass --home or run from the repository root (its _config.yml)");
  const m = home.replace(/\/+$/, "").match(/^https:\/\/github\.com\/([^/]+)\/([^/]+)$/);
  if (!m) usage(`repository url must be https://github.com/OWNER/REPO, got ${home}`);
  return { owner: m[1], repo: m[2], branch: branch || "main" };
}

const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript",
  ".css": "text/css; charset=utf-8", ".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml", ".ico": "image/x-icon",
  ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf", ".eot": "application/vnd.ms-fontobject",
  ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8", ".ipynb": "application/json",
  ".map": "application/json", ".pdf": "application/pdf", ".webp": "image/webp",
};

function serve(root) {
  const server = http.createServer((req, res) => {
    let rel;
    try {
      rel = decodeURIComponent(new URL(req.url, "http://127.0.0.1").pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    let file = path.normalize(path.join(root, rel));
    if (!file.startsWith(root)) {
      res.writeHead(403).end();
      return;
    }
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "index.html");
    fs.readFile(file, (err, body) => {
      if (err) {
        res.writeHead(404, { "content-type": "text/plain" }).end("not found");
        return;
      }
      res.writeHead(200, { "content-type": TYPES[path.extname(file).toLowerCase()] || "application/octet-stream" });
      res.end(body);
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

function listPages(root, filter) {
  const out = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".html")) out.push(path.relative(root, p).split(path.sep).join("/"));
    }
  };
  const bookDir = path.join(root, "book");
  if (fs.existsSync(bookDir)) walk(bookDir);
  return out.sort().filter((p) => !filter || p.includes(filter));
}

async function checkPage(context, base, rel, opts, repo) {
  const problems = [];
  const notes = [];
  const offsite = [];
  const page = await context.newPage();
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  const origin = new URL(base).origin;

  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + "/") || url.startsWith("data:") || url.startsWith("blob:")) return route.continue();
    offsite.push(url);
    return route.abort("blockedbyclient");
  });
  page.on("console", (msg) => {
    if (msg.type() === "error") {
      const text = msg.text();
      // A request this check blocked on purpose is reported once, as an off-site request, not twice.
      if (/ERR_BLOCKED_BY_CLIENT/.test(text)) return;
      problems.push(`console error: ${text}`);
    }
  });
  page.on("pageerror", (err) => problems.push(`uncaught exception: ${err.message}`));
  page.on("response", (resp) => {
    const u = new URL(resp.url());
    if (u.origin === origin && resp.status() >= 400 && u.pathname !== "/favicon.ico") {
      problems.push(`missing file (HTTP ${resp.status()}): ${u.pathname}`);
    }
  });

  await page.goto(`${base}/${rel}`, { waitUntil: "load" });

  // Scripts and stylesheets must come from the site itself.
  const external = await page.evaluate((o) => {
    const bad = [];
    for (const s of document.querySelectorAll("script[src]")) if (new URL(s.src, location.href).origin !== o) bad.push(`script ${s.src}`);
    for (const l of document.querySelectorAll('link[rel~="stylesheet"][href], link[rel~="preload"][href]')) {
      if (new URL(l.href, location.href).origin !== o) bad.push(`stylesheet ${l.href}`);
    }
    return bad;
  }, origin);
  for (const b of external) problems.push(`loads from off-site: ${b}`);

  // Math: every Sphinx math node must have been typeset by MathJax, without TeX errors.
  const nMath = await page.locator(".math").count();
  if (nMath > 0) {
    const hasMathJax = await page.evaluate(() => !!document.querySelector('script[src*="mathjax"]'));
    if (!hasMathJax) problems.push(`${nMath} math elements but no MathJax script`);
    else {
      try {
        await page.waitForFunction(() => window.MathJax && window.MathJax.startup && window.MathJax.startup.promise,
          null, { timeout: 30_000 });
        await page.evaluate(() => window.MathJax.startup.promise);
      } catch (e) {
        problems.push(`MathJax did not start: ${e.message.split("\n")[0]}`);
      }
      const m = await page.evaluate(() => {
        const els = [...document.querySelectorAll(".math")];
        return {
          untypeset: els.filter((e) => !e.querySelector("mjx-container")).map((e) => e.textContent.trim().slice(0, 60)),
          errors: [...document.querySelectorAll("mjx-merror")].map((e) => e.getAttribute("data-mjx-error") || e.textContent),
          containers: document.querySelectorAll("mjx-container").length,
        };
      });
      if (m.untypeset.length) problems.push(`${m.untypeset.length} of ${nMath} math elements not typeset, e.g. ${JSON.stringify(m.untypeset[0])}`);
      if (m.errors.length) problems.push(`MathJax TeX errors: ${m.errors.slice(0, 3).join(" | ")}`);
      notes.push(`${m.containers} math`);
    }
  }

  // Players: "Next frame" advances the slider and the image.
  const players = page.locator("div.animation");
  const nPlayers = await players.count();
  for (let i = 0; i < nPlayers; i++) {
    const p = players.nth(i);
    const slider = p.locator("input.anim-slider");
    const img = p.locator("img");
    try {
      await p.scrollIntoViewIfNeeded();
      await page.waitForFunction((el) => el.querySelector("img") && el.querySelector("img").src.startsWith("data:image"),
        await p.elementHandle(), { timeout: 10_000 });
      const max = Number(await slider.evaluate((s) => s.max));
      const before = Number(await slider.inputValue());
      const srcBefore = await img.getAttribute("src");
      await p.locator('button[title="Next frame"]').click();
      const after = Number(await slider.inputValue());
      const srcAfter = await img.getAttribute("src");
      const natural = await img.evaluate((el) => el.naturalWidth);
      if (!(max >= 1)) problems.push(`player ${i + 1}: has ${max + 1} frame(s), a player needs at least 2`);
      else if (after !== before + 1) problems.push(`player ${i + 1}: Next frame moved the slider from ${before} to ${after}`);
      else if (srcAfter === srcBefore) problems.push(`player ${i + 1}: Next frame did not change the image`);
      if (!(natural > 0)) problems.push(`player ${i + 1}: its frame image did not render`);
      // and the slider itself scrubs
      await slider.evaluate((s) => { s.value = s.max; s.dispatchEvent(new Event("input")); });
      const last = Number(await slider.inputValue());
      if (last !== max) problems.push(`player ${i + 1}: the slider did not reach the last frame`);
    } catch (e) {
      problems.push(`player ${i + 1}: ${e.message.split("\n")[0]}`);
    }
  }
  if (nPlayers) notes.push(`${nPlayers} player(s)`);
  // Every chapter of Parts I and II scrubs through t with at least one player (DESIGN: players carry their frames).
  if (/^book\/part[12]\/\d\d_[^/]+\.html$/.test(rel) && nPlayers === 0) problems.push("chapter of Part I/II without a player");

  // Launch button: pages built from notebooks open in Colab from the book's home.
  const colab = await page.evaluate(() =>
    [...document.querySelectorAll('a[href*="colab.research.google.com"]')].map((a) => a.getAttribute("href")));
  const ipynb = rel.replace(/\.html$/, ".ipynb");
  const fromNotebook = fs.existsSync(path.join(opts.root, "_sources", ipynb));
  if (fromNotebook) {
    const want = `https://colab.research.google.com/github/${repo.owner}/${repo.repo}/blob/${repo.branch}/${ipynb}`;
    if (!colab.includes(want)) problems.push(`Colab link: want ${want}, found ${JSON.stringify(colab)}`);
    else notes.push("colab ok");
  } else if (colab.length) {
    problems.push(`page is not a notebook but links to Colab: ${colab[0]}`);
  }

  // Off-site requests (all blocked): none is allowed.
  for (const u of [...new Set(offsite)]) problems.push(`request off 127.0.0.1 (blocked): ${u}`);

  if (opts.screenshots) {
    await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
    const shot = path.join(opts.screenshots, rel.replace(/\//g, "__").replace(/\.html$/, ".png"));
    await page.screenshot({ path: shot, fullPage: true });
  }
  // Layout (last: it opens hidden content and resizes the page): equations, players and figures fit the column.
  for (const vp of opts.viewports) {
    await page.setViewportSize(vp);
    let found;
    try {
      found = await page.evaluate(measureLayout, LAYOUT_SLACK_PX);
    } catch (e) {
      problems.push(`layout at ${vp.width}x${vp.height}: could not measure: ${e.message.split("\n")[0]}`);
      continue;
    }
    for (const o of found.overflows) {
      problems.push(`${o.kind} overflows its column at ${vp.width}x${vp.height}: ${o.id}: ${o.why}`);
    }
    if (vp === opts.viewports[0]) notes.push(`fits ${vp.width}x${vp.height} (${found.measured} measured)`);
  }

  await page.close();
  return { problems, notes };
}

// Runs in the page: finds every display equation, player and image/figure in the article and returns those
// wider than the box they sit in (or the article's column), or lying outside the column.
async function measureLayout(slack) {
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) await window.MathJax.startup.promise;
  // Open what a reader can open: code cells hidden in <details>, solutions hidden by sphinx-togglebutton.
  for (const d of document.querySelectorAll("details")) d.open = true;
  for (const t of document.querySelectorAll(".toggle-hidden")) t.classList.remove("toggle-hidden");
  for (const img of document.querySelectorAll("img")) {
    if (img.loading === "lazy") img.loading = "eager";
    if (!img.complete) await img.decode().catch(() => {});
  }
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));

  const px = (v) => parseFloat(v) || 0;
  const contentBox = (el) => {
    const r = el.getBoundingClientRect();
    const cs = getComputedStyle(el);
    const left = r.left + px(cs.borderLeftWidth) + px(cs.paddingLeft);
    return { left, width: el.clientWidth - px(cs.paddingLeft) - px(cs.paddingRight) };
  };
  const column = document.querySelector("article.bd-article") || document.querySelector("main#main-content, [role=main], main")
    || document.body;
  const col = contentBox(column);
  const colRight = col.left + col.width;
  // The box an element is laid out in: its nearest ancestor that is not inline.
  const blockParent = (el) => {
    let p = el.parentElement;
    while (p && p !== column && /^(inline|contents)$/.test(getComputedStyle(p).display)) p = p.parentElement;
    return p || column;
  };
  const headings = [...column.querySelectorAll("h1, h2, h3, h4, h5, h6")];
  const heading = (el) => {
    let h = null;
    for (const x of headings) if (x.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING) h = x; else break;
    return h ? ` under "${h.textContent.replace(/[#¶]/g, "").replace(/\s+/g, " ").trim().slice(0, 60)}"` : "";
  };
  const visible = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const r1 = (x) => Math.round(x);

  // TeX of each typeset math item, by its container.
  const tex = new Map();
  try {
    for (const item of window.MathJax.startup.document.math) if (item.typesetRoot) tex.set(item.typesetRoot, item.math);
  } catch { /* no MathJax: no equations either */ }

  const items = [];
  // Display equations. Sphinx wraps each in div.math (with the number, span.eqno); the theme makes the
  // mjx-container scroll sideways, so what is cut off shows only in its scroll width / the mjx-math's width.
  for (const c of column.querySelectorAll('mjx-container[display="true"]')) {
    if (!visible(c)) continue;
    const box = c.closest("div.math") || c;
    const m = c.querySelector("mjx-math");
    const mathW = m ? m.getBoundingClientRect().width : 0;
    const hidden = Math.max(0, c.scrollWidth - c.clientWidth, mathW - c.clientWidth, px(c.style.minWidth) - c.clientWidth)
      + (box === c ? 0 : Math.max(0, box.scrollWidth - box.clientWidth));
    const eqno = box.querySelector(".eqno");
    const source = (tex.get(c) || (c.querySelector("mjx-assistive-mml") || c).textContent || "").replace(/\s+/g, " ").trim();
    const label = [eqno ? eqno.textContent.replace(/[#¶]/g, "").trim() : "", box.id ? `#${box.id}` : ""].filter(Boolean).join(" ");
    items.push({ kind: "equation", el: box, need: box.getBoundingClientRect().width + hidden, what: `math ${r1(mathW)} px`,
      id: `${label ? label + " " : ""}${JSON.stringify(source.slice(0, 60))}${label ? "" : heading(c)}` });
  }
  // Players: matplotlib's to_jshtml (div.animation), image and controls together.
  const players = [...column.querySelectorAll("div.animation")];
  players.forEach((p, i) => {
    if (!visible(p)) return;
    let need = Math.max(p.getBoundingClientRect().width, p.scrollWidth);
    for (const k of p.querySelectorAll("img, input, button")) need = Math.max(need, k.getBoundingClientRect().right - p.getBoundingClientRect().left);
    const img = p.querySelector("img");
    items.push({ kind: "player", el: p, need, what: img ? `frame ${r1(img.getBoundingClientRect().width)} px` : "",
      id: `player ${i + 1}${heading(p)}` });
  });
  // Figures and images (notebook outputs included), each measured once: a figure with its image(s) inside.
  const inPlayerOrMath = (el) => el.closest("div.animation, mjx-container, button");
  for (const f of column.querySelectorAll("figure, div.figure")) {
    if (!visible(f) || inPlayerOrMath(f)) continue;
    let need = Math.max(f.getBoundingClientRect().width, f.scrollWidth);
    for (const k of f.querySelectorAll("img, svg, video, canvas")) need = Math.max(need, k.getBoundingClientRect().width);
    const img = f.querySelector("img");
    const name = f.id ? `#${f.id}` : img ? (img.getAttribute("src") || "").split("/").pop().slice(0, 24) : "figure";
    items.push({ kind: "figure", el: f, need, what: "", id: `${name}${heading(f)}` });
  }
  for (const el of column.querySelectorAll("img, .cell_output svg, video, canvas, iframe")) {
    if (!visible(el) || inPlayerOrMath(el) || el.closest("figure, div.figure") || el.parentElement.closest("svg")) continue;
    const r = el.getBoundingClientRect();
    const src = el.tagName === "IMG" ? (el.getAttribute("src") || "").split("/").pop() : el.tagName.toLowerCase();
    const name = src.startsWith("data:") ? "inline image" : src.slice(0, 24);
    items.push({ kind: "image", el, need: Math.max(r.width, el.scrollWidth || 0), what: "",
      id: `${el.closest(".cell_output") ? "cell output " : ""}${name}${heading(el)}` });
  }

  const overflows = [];
  for (const it of items) {
    const parent = blockParent(it.el);
    const host = parent === column ? col : contentBox(parent);
    const avail = Math.min(col.width, host.width);
    const r = it.el.getBoundingClientRect();
    const right = r.left + it.need;
    const where = host.width < col.width - slack ? `its box ${r1(host.width)} px, column ${r1(col.width)} px` : `column ${r1(col.width)} px`;
    const what = it.what ? ` (${it.what})` : "";
    if (it.need > avail + slack) overflows.push({ ...it, why: `needs ${r1(it.need)} px${what}, ${where}` });
    else if (right > colRight + slack || r.left < col.left - slack) {
      overflows.push({ ...it, why: `spans ${r1(r.left - col.left)}..${r1(right - col.left)} px of a column 0..${r1(col.width)} px` });
    }
  }
  return { measured: items.length, overflows: overflows.map(({ kind, id, why }) => ({ kind, id, why })) };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const repo = repoFromConfig(opts);
  if (!fs.existsSync(CHROMIUM)) usage(`no Chromium at ${CHROMIUM}: make chromium (apt-get install chromium)`);
  if (opts.screenshots) fs.mkdirSync(opts.screenshots, { recursive: true });
  const pages = listPages(opts.root, opts.pages);
  if (!pages.length) usage(`no pages under ${opts.root}/book`);

  const server = await serve(opts.root);
  const base = `http://127.0.0.1:${server.address().port}`;
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "ddpm-tutor-chromium-"));
  let context;
  let passed = 0, failed = 0;
  const t0 = Date.now();
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS,
      viewport: { width: 1200, height: 900 }, offline: false, serviceWorkers: "block",
    });
    for (const rel of pages) {
      let result;
      try {
        result = await checkPage(context, base, rel, opts, repo);
      } catch (e) {
        result = { problems: [`could not check: ${e.message.split("\n")[0]}`], notes: [] };
      }
      if (result.problems.length) {
        failed++;
        console.log(`FAIL ${rel}`);
        for (const p of result.problems) console.log(`     - ${p}`);
      } else {
        passed++;
        console.log(`ok   ${rel}${result.notes.length ? ` (${result.notes.join(", ")})` : ""}`);
      }
    }
  } finally {
    if (context) await context.close();
    server.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  console.log(`browser check: ${pages.length} pages in ${secs} s${opts.screenshots ? `, screenshots in ${opts.screenshots}` : ""}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(`check_book: ${e.stack || e}`);
  console.log("0 passed, 1 failed");
  process.exit(1);
});
