#!/usr/bin/env node
// Headless check of the built book, as a reader with no network would see it.
//
//   node tests/browser/check_book.mjs HTML_DIR [--screenshots DIR] [--home URL] [--branch NAME]
//                                               [--config _config.yml] [--pages GLOB-ish substring]
//                                               [--layout WxH[,WxH...]] [--phone WxH|none] [--dark on|off]
//                                               [--page-sizes benchmarks/page_sizes.json|none]
//                                               [--student DIR]
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
//   - at the --phone viewport (default 390x844) the page itself does not scroll sideways (equations and code
//     may scroll in their own boxes), and every player's frame, slider and buttons lie on screen, not covered,
//     and "First frame" then "Next frame" change its frame;
//   - in the theme's dark mode (--dark on), every figure and every frame of every player has an opaque, light
//     background (its four corner pixels), so black axes never sit on the dark page;
//   - the page's own bytes (its HTML, players' frames included, and its images; not the theme and MathJax files
//     every page shares) times the page's book/ci ratio recorded in --page-sizes (written by
//     benchmarks/bench_page_size.py) are within that file's page budget; after all pages, the whole HTML_DIR
//     times the recorded site ratio and number of editions is within the site budget;
//   - with --student DIR (a student edition: DIR holds the solution-free notebooks/ and the solution_fingerprints.json
//     that `python -m ddpm_tutor.assignments student` writes), the page, every notebook it links to (its download
//     button, fetched from the site) and the notebook each Colab link opens (the file of DIR/notebooks at the link's
//     path, which the pages workflow pushes to that branch) hold no line of a solution and no :::{solution}
//     block; a page built from a notebook must offer both links. --layout none skips the layout check;
// and saves a full-page screenshot of each page, and one at the phone viewport in dark mode (NAME__phone__dark.jpg).
// Prints one line per page, then `N passed, N failed`, and exits 1 when any page failed (2 on bad usage).
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
// A phone's viewport (iPhone 12-15: 390 x 844 CSS px), and the lightest a figure's corner may be in dark mode.
const PHONE_VIEWPORT = "390x844";
const LIGHT_MIN = 200;  // luminance 0..255 of a figure's corner pixels: matplotlib's white is 255
const PAGE_SIZES = "benchmarks/page_sizes.json";
const BENCH = "python benchmarks/bench_page_size.py";

function usage(msg) {
  console.error(`check_book: ${msg}`);
  console.error("usage: node tests/browser/check_book.mjs HTML_DIR [--screenshots DIR] [--home URL] [--branch NAME] [--config FILE] [--pages SUBSTRING] [--layout WxH[,WxH...]] [--phone WxH|none] [--dark on|off] [--page-sizes FILE|none] [--student DIR]");
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    screenshots: null, home: null, branch: null, config: "_config.yml", pages: null, layout: LAYOUT_VIEWPORTS,
    phone: PHONE_VIEWPORT, dark: "on", "page-sizes": PAGE_SIZES, student: null,
  };
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
  opts.viewports = opts.layout === "none" ? [] : opts.layout.split(",").map((v) => {
    const m = v.trim().match(/^(\d+)x(\d+)$/);
    if (!m) usage(`--layout wants WIDTHxHEIGHT[,WIDTHxHEIGHT...], got ${opts.layout}`);
    return { width: Number(m[1]), height: Number(m[2]) };
  });
  if (opts.phone === "none") opts.phone = null;
  else {
    const m = opts.phone.match(/^(\d+)x(\d+)$/);
    if (!m) usage(`--phone wants WIDTHxHEIGHT or none, got ${opts.phone}`);
    opts.phone = { width: Number(m[1]), height: Number(m[2]) };
  }
  if (!["on", "off"].includes(opts.dark)) usage(`--dark wants on or off, got ${opts.dark}`);
  opts.dark = opts.dark === "on";
  opts.sizes = opts["page-sizes"] === "none" ? null : readPageSizes(opts["page-sizes"]);
  opts.solutions = opts.student ? readFingerprints(opts.student) : null;
  opts.root = path.resolve(rest[0]);
  if (!fs.existsSync(path.join(opts.root, "index.html"))) usage(`${opts.root} has no index.html: build the book first`);
  return opts;
}

// The budgets and book/ci ratios that benchmarks/bench_page_size.py recorded.
function readPageSizes(file) {
  let sizes;
  try {
    sizes = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    usage(`--page-sizes ${file}: ${e.code === "ENOENT" ? "no such file; run " + BENCH : e.message}`);
  }
  const b = sizes && sizes.budget, site = sizes && sizes.site;
  if (!b || !(b.page_bytes > 0) || !(b.site_bytes > 0) || !sizes.pages || !site || !(site.ratio > 0) || !(site.editions >= 1)) {
    usage(`--page-sizes ${file}: expected budget.page_bytes, budget.site_bytes, pages and site.ratio/editions (${BENCH} writes it)`);
  }
  return sizes;
}

// A student edition's solution-free notebooks and the lines of the solutions they must not hold.
function readFingerprints(dir) {
  const file = path.join(dir, "solution_fingerprints.json");
  let prints;
  try {
    prints = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    usage(`--student ${dir}: cannot read ${file} (${e.code || e.message}); python -m ddpm_tutor.assignments student writes it`);
  }
  const lines = Object.entries(prints).flatMap(([entry, ls]) => ls.map((line) => ({ entry, line })));
  if (!lines.length) usage(`--student ${dir}: ${file} lists no solution line`);
  return { notebooks: path.join(dir, "notebooks"), lines };
}

// What a served file says, whitespace collapsed (as ddpm_tutor.assignments.student.page_text): a notebook's cell
// sources and text outputs.
const collapse = (text) => text.split(/\s+/).filter(Boolean).join(" ");
function notebookText(raw) {
  const parts = [];
  for (const cell of JSON.parse(raw).cells || []) {
    const src = cell.source || "";
    parts.push(Array.isArray(src) ? src.join("") : src);
    for (const out of cell.outputs || []) {
      const texts = [out.text || ""];
      for (const [k, v] of Object.entries(out.data || {})) if (k.startsWith("text/")) texts.push(v);
      for (const t of texts) parts.push(Array.isArray(t) ? t.join("") : t);
    }
  }
  return collapse(parts.join("\n"));
}

// The solutions a text holds: "chapter: line" of each fingerprint found, and a MyST solution block.
function solutionLeaks(text, solutions) {
  const found = solutions.lines.filter(({ line }) => text.includes(line)).map(({ entry, line }) => `${entry}: ${line.slice(0, 80)}`);
  if (/:{3,}\{solution\}/.test(text)) found.push("a :::{solution} block");
  return found;
}

const MB = (bytes) => (bytes / 1e6).toFixed(2);

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

  if (opts.solutions) {
    const leaks = [];
    const html = await page.content();
    if (/class="[^"]*\bsolution\b/.test(html)) leaks.push("the page: a solution element (sphinx-exercise)");
    const pageText = collapse(await page.evaluate(() => document.body.textContent));
    for (const l of solutionLeaks(pageText, opts.solutions)) leaks.push(`the page: ${l}`);
    const downloads = await page.evaluate(() =>
      [...document.querySelectorAll("a[href]")].map((a) => a.href).filter((h) => /\.ipynb(\?|#|$)/.test(new URL(h).pathname)));
    const local = [...new Set(downloads.filter((h) => new URL(h).origin === origin))];
    for (const h of new Set(downloads.filter((u) => new URL(u).origin !== origin && !u.startsWith("https://colab.research.google.com/")))) {
      problems.push(`student edition: links to a notebook off the site, which this check cannot vouch for: ${h}`);
    }
    for (const url of local) {
      const resp = await page.request.get(url);
      if (!resp.ok()) { problems.push(`download ${url}: HTTP ${resp.status()}`); continue; }
      for (const l of solutionLeaks(notebookText(await resp.text()), opts.solutions)) leaks.push(`download ${new URL(url).pathname}: ${l}`);
    }
    const colabPrefix = `https://colab.research.google.com/github/${repo.owner}/${repo.repo}/blob/${repo.branch}/`;
    for (const url of colab) {
      if (!url.startsWith(colabPrefix)) { problems.push(`Colab link off the student branch ${repo.branch}: ${url}`); continue; }
      const file = path.join(opts.solutions.notebooks, url.slice(colabPrefix.length));
      if (!fs.existsSync(file)) { problems.push(`Colab link ${url}: no such notebook on the branch (${file})`); continue; }
      for (const l of solutionLeaks(notebookText(fs.readFileSync(file, "utf8")), opts.solutions)) leaks.push(`Colab ${url}: ${l}`);
    }
    if (fromNotebook && (!local.length || !colab.length)) problems.push(`student edition: want a download and a Colab link, found ${local.length} and ${colab.length}`);
    for (const l of leaks.slice(0, 5)) problems.push(`solution served: ${l}`);
    if (leaks.length > 5) problems.push(`solution served: and ${leaks.length - 5} more`);
    if (!leaks.length) notes.push(`no solution (${local.length} download(s), ${colab.length} Colab link(s))`);
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

  const shot = (name) => path.join(opts.screenshots, rel.replace(/\//g, "__").replace(/\.html$/, name));
  if (opts.phone) {
    const vp = opts.phone, at = `at ${vp.width}x${vp.height}`, before = problems.length;
    // no CSS transitions (the theme slides its sidebars away when the window narrows): measure the final layout now
    await page.addStyleTag({ content: "*, *::before, *::after { transition: none !important; }" });
    await page.setViewportSize(vp);
    const wide = await page.evaluate(pageScrollsSideways, LAYOUT_SLACK_PX);
    if (wide.scrollWidth > wide.clientWidth + LAYOUT_SLACK_PX) {
      problems.push(`the page scrolls sideways ${at}: ${wide.scrollWidth} px wide in ${wide.clientWidth} px; ${wide.culprits.join("; ") || "cause not found"}`);
    }
    for (let i = 0; i < nPlayers; i++) {
      try {
        const p = players.nth(i);
        await p.scrollIntoViewIfNeeded();
        const { hidden, value, changed } = await p.evaluate(phonePlayer);
        if (hidden.length) problems.push(`player ${i + 1} ${at}: not usable, ${hidden.join(", ")}`);
        if (value !== 1 || !changed) problems.push(`player ${i + 1} ${at}: First then Next frame left the slider at ${value}${changed ? "" : " and the image unchanged"}`);
      } catch (e) {
        problems.push(`player ${i + 1} ${at}: ${e.message.split("\n")[0]}`);
      }
    }
    if (problems.length === before) notes.push(`phone ${vp.width} ok`);
  }
  if (opts.dark) {
    // at the phone's viewport when there is one: the pixels checked do not depend on it, and one screenshot then
    // shows both passes
    if (!opts.phone && opts.viewports.length) await page.setViewportSize(opts.viewports[0]);
    const dark = await page.evaluate(darkModeFigures, LIGHT_MIN);
    if (!dark.theme) problems.push(`dark mode: the theme did not switch (html data-theme = ${dark.themeSeen})`);
    for (const b of dark.bad.slice(0, 5)) problems.push(`dark mode: ${b}`);
    if (dark.bad.length > 5) problems.push(`dark mode: and ${dark.bad.length - 5} more images without a light background`);
    if (!dark.bad.length) notes.push(`dark ok (${dark.images} images)`);
  }
  if (opts.screenshots && (opts.phone || opts.dark)) {
    // JPEG: smaller files, and a little faster to encode than a PNG this long
    await page.evaluate(() => window.scrollTo(0, 0));
    const name = `${opts.phone ? "__phone" : ""}${opts.dark ? "__dark" : ""}.jpg`;
    await page.screenshot({ path: shot(name), fullPage: true, type: "jpeg", quality: 80 });
  }
  if (opts.sizes) {
    // The page's own bytes: its HTML (players' frames are data: URIs in it) and the images it shows.
    const srcs = await page.evaluate(() => [...new Set([...document.images].map((i) => i.currentSrc || i.src))]);
    let own = fs.statSync(path.join(opts.root, rel)).size;
    for (const src of srcs) {
      const u = new URL(src);
      if (u.origin !== origin || u.pathname.startsWith("/_static/")) continue;
      const file = path.join(opts.root, decodeURIComponent(u.pathname));
      if (fs.existsSync(file)) own += fs.statSync(file).size;
    }
    const rec = opts.sizes.pages[rel];
    if (!rec) problems.push(`page size: ${rel} is not in ${opts["page-sizes"]}; run ${BENCH} after make test-book`);
    else {
      const book = own * rec.ratio;
      if (book > opts.sizes.budget.page_bytes) {
        problems.push(`page size: ${MB(own)} MB here x ${rec.ratio.toFixed(2)} (book/ci, ${opts["page-sizes"]}) = ${MB(book)} MB under budget book, over the ${MB(opts.sizes.budget.page_bytes)} MB budget`);
      }
      notes.push(`${MB(own)} MB, book ~${MB(book)} MB`);
    }
  }

  await page.close();
  return { problems, notes };
}

// Runs in the page: the page's scroll width and, when it is too wide, the outermost elements that stick out of
// the viewport outside any box of their own that scrolls or clips.
async function pageScrollsSideways(slack) {
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) await window.MathJax.startup.promise;
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const se = document.scrollingElement;
  const out = { scrollWidth: se.scrollWidth, clientWidth: se.clientWidth, culprits: [] };
  if (out.scrollWidth <= out.clientWidth + slack) return out;
  // boxes that keep what sticks out of them to themselves: they scroll or clip it, or are fixed to the screen
  const contains = (el) => {
    const cs = getComputedStyle(el);
    return /^(auto|scroll|hidden|clip)$/.test(cs.overflowX) || cs.position === "fixed" || cs.visibility === "hidden";
  };
  const sticksOut = (el) => el.getBoundingClientRect().right > out.clientWidth + slack;
  for (const el of document.body.querySelectorAll("*")) {
    if (!sticksOut(el) || (el.parentElement && el.parentElement !== document.body && sticksOut(el.parentElement))) continue;
    let a = el, inBox = false;
    for (; a && a !== document.body; a = a.parentElement) if ((a !== el || getComputedStyle(a).position === "fixed") && contains(a)) { inBox = true; break; }
    if (inBox) continue;
    const name = el.tagName.toLowerCase() + (el.id ? `#${el.id}` : "") + (el.classList.length ? `.${[...el.classList].slice(0, 2).join(".")}` : "");
    const text = (el.closest("h1, h2, h3, h4, h5, h6, p, li, td, th, dt") || el).textContent.replace(/[#¶]/g, "").replace(/\s+/g, " ").trim().slice(0, 50);
    out.culprits.push(`${name}${text ? ` in ${JSON.stringify(text)}` : ""} ends at ${Math.round(el.getBoundingClientRect().right)} px`);
    if (out.culprits.length >= 3) break;
  }
  return out;
}

// Runs in the page on one player: which of its frame, slider and buttons are not wholly on screen (cut by the
// window or by a box that scrolls or clips) or are covered, and what its "First frame" then "Next frame" buttons
// do (clicked here: the check above made sure nothing covers them).
function phonePlayer(p) {
  const bad = [];
  // the visible strip: the window, narrowed by every enclosing box that scrolls or clips sideways
  let left = 0, right = document.documentElement.clientWidth;
  for (let a = p.parentElement; a && a !== document.body; a = a.parentElement) {
    if (getComputedStyle(a).overflowX === "visible") continue;
    const r = a.getBoundingClientRect();
    left = Math.max(left, r.left + a.clientLeft);
    right = Math.min(right, r.left + a.clientLeft + a.clientWidth);
  }
  for (const el of [p.querySelector("img"), p.querySelector("input.anim-slider"), ...p.querySelectorAll("button")]) {
    if (!el) continue;
    const r = el.getBoundingClientRect();
    const name = el.tagName === "BUTTON" ? `button "${el.title}"` : el.tagName === "IMG" ? "its frame" : "its slider";
    if (r.width <= 0 || r.left < left - 1 || r.right > right + 1) {
      bad.push(`${name} spans ${Math.round(r.left)}..${Math.round(r.right)} px, visible ${Math.round(left)}..${Math.round(right)} px`);
      continue;
    }
    const hit = document.elementFromPoint(r.left + r.width / 2, Math.min(Math.max(r.top + r.height / 2, 0), innerHeight - 1));
    if (r.top + r.height / 2 >= 0 && r.top + r.height / 2 < innerHeight && !(hit && (hit === el || el.contains(hit)))) {
      bad.push(`${name} is covered by ${hit ? hit.tagName.toLowerCase() + (hit.className ? "." + String(hit.className).split(" ")[0] : "") : "nothing"}`);
    }
  }
  const img = p.querySelector("img"), slider = p.querySelector("input.anim-slider");
  p.querySelector('button[title="First frame"]').click();
  const first = img.src;
  p.querySelector('button[title="Next frame"]').click();
  return { hidden: bad, value: Number(slider.value), changed: img.src !== first };
}

// Runs in the page: switches pydata-sphinx-theme's CSS to dark mode (what its theme button does, less the choice
// it stores for later pages) and returns every figure image and player frame of the article whose corner pixels
// are not opaque and light.
async function darkModeFigures(lightMin) {
  document.documentElement.dataset.theme = "dark";
  document.documentElement.dataset.mode = "dark";
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const themeSeen = document.documentElement.dataset.theme;
  const bg = getComputedStyle(document.body).backgroundColor;
  const column = document.querySelector("article.bd-article") || document.body;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 1;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const corners = (img) => {
    const w = img.naturalWidth, h = img.naturalHeight;
    return [[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]].map(([x, y]) => {
      ctx.clearRect(0, 0, 1, 1);
      ctx.drawImage(img, x, y, 1, 1, 0, 0, 1, 1);
      return [...ctx.getImageData(0, 0, 1, 1).data];
    });
  };
  const light = ([r, g, b, a]) => a === 255 && 0.2126 * r + 0.7152 * g + 0.0722 * b >= lightMin;
  const bad = [];
  let images = 0;
  const check = async (img, name) => {
    if (!img.complete || !img.naturalWidth) await img.decode().catch(() => {});
    if (!img.naturalWidth) return;  // a missing file is reported as such
    images++;
    const px = corners(img);
    if (!px.every(light)) bad.push(`${name}: corner pixels (RGBA) ${px.map((c) => c.join(",")).join(" | ")}, not opaque and light`);
  };
  const players = [...column.querySelectorAll("div.animation")];
  for (const [i, p] of players.entries()) {
    const img = p.querySelector("img");
    const anim = img && window[`anim${img.id.replace(/^_anim_img/, "")}`];
    const frames = anim && anim.frames ? anim.frames : img ? [img] : [];
    for (const [k, f] of frames.entries()) await check(f, `player ${i + 1} frame ${k + 1}`);
  }
  for (const img of column.querySelectorAll("img")) {
    if (img.closest("div.animation")) continue;
    const src = img.getAttribute("src") || "";
    await check(img, `image ${src.startsWith("data:") ? "(inline)" : src.split("/").pop().slice(0, 24)}`);
  }
  return { theme: themeSeen === "dark" && bg !== "rgb(255, 255, 255)", themeSeen: `${themeSeen}, body ${bg}`, bad, images };
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
  if (opts.student && repo.branch === "main") {
    usage(`--student: the Colab links of a student edition open its own branch, not main (the solutions'); pass its --config`);
  }
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
  if (opts.sizes) {
    // The whole site as deployed: this build's files, scaled to budget book, once per edition (pages.yml).
    let site = 0;
    const walk = (dir) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.isFile()) site += fs.statSync(p).size;
      }
    };
    walk(opts.root);
    const { ratio, editions } = opts.sizes.site, budget = opts.sizes.budget.site_bytes;
    const deployed = site * ratio * editions;
    const line = `${MB(site)} MB here x ${ratio.toFixed(2)} (book/ci) x ${editions} edition(s) = ${MB(deployed)} MB deployed, budget ${MB(budget)} MB`;
    if (deployed > budget) {
      failed++;
      console.log("FAIL site size");
      console.log(`     - ${line}`);
    } else console.log(`ok   site size (${line})`);
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
