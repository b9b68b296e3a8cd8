#!/usr/bin/env python3
"""Headless-Chromium check of the gateway's browser playground.

Opens the playground page served by a running gateway, generates one video
(or a two-line story) and checks that every requested stage video and the
final video actually render and play in the browser.

    python3 tests/playground/check.py --url http://127.0.0.1:PORT/ \
        [--format gif|mp4|png] [--stages base,tsr,ssr] [--timeout 120] [--story]

Needs selenium plus Debian's chromium and chromedriver; nothing is
downloaded. Exit status: 0 ok, 1 a check failed, 3 `--format mp4` on a
Chromium that cannot play H.264.
"""

import argparse
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PROMPT = "a red circle moving left on a black background"
STORY = ["a red circle moving left on a black background | 2",
         "a blue square moving up on a black background | 2"]
FORMATS = {"gif": "VIDEO_FORMAT_GIF", "mp4": "VIDEO_FORMAT_MP4", "png": "VIDEO_FORMAT_PNG"}
H264 = 'video/mp4; codecs="avc1.42E01E"'

# Records every .stage-preview element the page ever inserts (previews are
# replaced as they arrive, so checking at the end alone would miss some).
WATCH_PREVIEWS_JS = """
window.__previewsSeen = 0;
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes) {
    if (n.nodeType !== 1) continue;
    if (n.matches('.stage-preview')) window.__previewsSeen++;
    window.__previewsSeen += n.querySelectorAll('.stage-preview').length;
  }
}).observe(document.body, {childList: true, subtree: true});
"""

# Checks each media element: arguments[0] = list of elements, arguments[1] =
# expected format ("gif", "png", "mp4"). Returns one dict per element.
CHECK_MEDIA_JS = r"""
const [els, format, done] = arguments;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const name = (el) => el.id ? '#' + el.id : `.${el.className}[data-stage=${el.dataset.stage}]`;

// Walks the GIF block structure: counts image descriptors and finds the
// NETSCAPE2.0 looping extension.
function gifInfo(b) {
  const ascii = (from, n) => String.fromCharCode(...b.subarray(from, from + n));
  if (b.length < 13 || !/^GIF8[79]a$/.test(ascii(0, 6))) return {error: 'not a GIF file'};
  let p = 13, frames = 0, loop = false;
  if (b[10] & 0x80) p += 3 * (1 << ((b[10] & 7) + 1));
  const skipSubBlocks = () => {
    while (p < b.length) { const n = b[p++]; if (n === 0) return true; p += n; }
    return false;
  };
  while (p < b.length) {
    const t = b[p++];
    if (t === 0x3B) return {frames, loop};
    if (t === 0x21) {
      const label = b[p++];
      if (label === 0xFF && b[p] === 11 && ascii(p + 1, 11) === 'NETSCAPE2.0') loop = true;
      if (!skipSubBlocks()) break;
    } else if (t === 0x2C) {
      const flags = b[p + 8];
      p += 9;
      if (flags & 0x80) p += 3 * (1 << ((flags & 7) + 1));
      p++;  // LZW minimum code size
      if (!skipSubBlocks()) break;
      frames++;
    } else {
      return {error: `bad GIF block 0x${t.toString(16)} at byte ${p - 1}`, frames};
    }
  }
  return {error: 'GIF is truncated (no trailer)', frames};
}

const imgOk = (el) => el.complete && el.naturalWidth > 0;

async function checkImg(el) {
  const r = {name: name(el), tag: 'img'};
  if (!imgOk(el)) { await sleep(1000); }
  if (!imgOk(el)) return {...r, error: `image did not decode (complete=${el.complete}, naturalWidth=${el.naturalWidth})`};
  r.size = `${el.naturalWidth}x${el.naturalHeight}`;
  if (format === 'gif') {
    const bytes = new Uint8Array(await (await fetch(el.src)).arrayBuffer());
    const g = gifInfo(bytes);
    if (g.error) return {...r, error: g.error};
    if (g.frames < 2) return {...r, error: `GIF has ${g.frames} frame(s), expected an animation`};
    if (!g.loop) return {...r, error: 'GIF has no NETSCAPE2.0 loop extension (plays once)'};
    r.frames = g.frames;
  } else if (format === 'png') {
    const frames = parseInt(el.dataset.frames || '1', 10);
    r.frames = frames;
    const seen = new Set([el.src]);
    for (let i = 0; i < 12; i++) {
      await sleep(100);
      seen.add(el.src);
    }
    if (frames > 1 && seen.size < 2) return {...r, error: `PNG frames did not cycle within 1.2 s (${frames} frames)`};
    r.distinct = seen.size;
  }
  return r;
}

async function checkVideo(el) {
  const r = {name: name(el), tag: 'video'};
  for (let i = 0; i < 50 && el.readyState < 2 && !el.error; i++) await sleep(100);
  if (el.error) return {...r, error: `media error ${el.error.code}: ${el.error.message}`};
  if (el.readyState < 2) return {...r, error: `readyState ${el.readyState} < 2 after 5 s`};
  if (el.paused) { try { await el.play(); } catch (e) { return {...r, error: `play() failed: ${e}`}; } }
  const t0 = el.currentTime;
  await sleep(1000);
  if (el.error) return {...r, error: `media error ${el.error.code}: ${el.error.message}`};
  if (el.currentTime === t0) return {...r, error: `currentTime stuck at ${t0} (not playing)`};
  r.size = `${el.videoWidth}x${el.videoHeight}`;
  return r;
}

Promise.all(els.map((el) => {
  const want = format === 'mp4' ? 'VIDEO' : 'IMG';
  if (el.tagName !== want) return {name: name(el), error: `is <${el.tagName.toLowerCase()}>, expected <${want.toLowerCase()}>`};
  return (want === 'VIDEO' ? checkVideo(el) : checkImg(el)).catch((e) => ({name: name(el), error: String(e)}));
})).then(done, (e) => done([{name: '?', error: String(e)}]));
"""


class CheckFailed(Exception):
    pass


def make_driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def state(driver):
    return driver.execute_script("return document.body.dataset.state || ''")


def text(driver, css):
    return driver.find_element(By.CSS_SELECTOR, css).text


def load_page(driver, url):
    driver.get(url)
    try:
        WebDriverWait(driver, 15).until(
            lambda d: d.execute_script("return document.body.dataset.info || ''") in ("loaded", "error"))
    except TimeoutException:
        raise CheckFailed(f"page at {url} never finished loading /v1/info (is the gateway running?)")
    if driver.execute_script("return document.body.dataset.info") != "loaded":
        raise CheckFailed(f"page could not load /v1/info: {text(driver, '#info')}")
    print(f"playground: info: {text(driver, '#info')}")


def fill_form(driver, args):
    if args.story:
        toggle = driver.find_element(By.ID, "story-mode")
        if not toggle.is_selected():
            toggle.click()
        story = driver.find_element(By.ID, "story")
        story.clear()
        story.send_keys("\n".join(STORY))
    else:
        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys(PROMPT)
    Select(driver.find_element(By.ID, "format")).select_by_value(FORMATS[args.format])


def wait_done(driver, timeout):
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(
            lambda d: state(d) in ("completed", "error", "cancelled"))
    except TimeoutException:
        raise CheckFailed(f"no result within {timeout} s (state {state(driver)!r}, "
                          f"status {text(driver, '#status')!r})")
    if state(driver) != "completed":
        raise CheckFailed(f"generation failed: {text(driver, '#status')}")
    print(f"playground: {text(driver, '#status')}")


def check_results(driver, args, stages):
    # Every requested stage has its video, and the final video exists.
    media = []
    for name in stages:
        found = driver.find_elements(By.CSS_SELECTOR, f'.stage-video[data-stage="{name}"]')
        if not found:
            raise CheckFailed(f"no .stage-video for stage {name!r}")
        media += found
    final = driver.find_elements(By.ID, "final-video")
    if not final:
        raise CheckFailed("no #final-video")
    media += final

    results = driver.execute_async_script(CHECK_MEDIA_JS, media, args.format)
    bad = [r for r in results if r.get("error")]
    for r in results:
        extra = ", ".join(f"{k}={r[k]}" for k in ("size", "frames", "distinct") if k in r)
        print(f"playground:   {r['name']}: {'FAIL ' + r['error'] if r.get('error') else 'ok'}"
              + (f" ({extra})" if extra and not r.get("error") else ""))
    if bad:
        raise CheckFailed("; ".join(f"{r['name']}: {r['error']}" for r in bad))

    # Progress bars ran to the end, and previews were shown.
    bars = driver.execute_script(
        "return [...document.querySelectorAll('.stage-progress')].map(p => "
        "[p.closest('.stage').dataset.stage, p.closest('.stage').dataset.clip, p.value, p.max])")
    if stages and not bars:
        raise CheckFailed("no .stage-progress bars")
    short = [b for b in bars if b[2] < b[3]]
    if short:
        raise CheckFailed("progress bars not at max: "
                          + ", ".join(f"{s} clip {c}: {v}/{m}" for s, c, v, m in short))
    previews = driver.execute_script("return window.__previewsSeen || 0")
    if previews < 1 and not driver.find_elements(By.CSS_SELECTOR, ".stage-preview"):
        raise CheckFailed("no .stage-preview appeared during the run")
    print(f"playground:   {len(bars)} progress bars at max, {previews} previews shown")

    if not driver.execute_script("return (document.querySelector('#download') || {}).href || ''"):
        raise CheckFailed("#download has no href")
    rows = driver.find_elements(By.CSS_SELECTOR, "#timings tbody tr")
    if not rows:
        raise CheckFailed("#timings has no rows")


def browser_log(driver):
    try:
        return [f"{e.get('level')}: {e.get('message')}" for e in driver.get_log("browser")]
    except Exception:  # not every driver supports it
        return []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="playground URL, e.g. http://127.0.0.1:8080/")
    ap.add_argument("--format", choices=sorted(FORMATS), default="gif")
    ap.add_argument("--stages", default="base,tsr,ssr", help="comma-separated stages that must show a video")
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for the video")
    ap.add_argument("--story", action="store_true", help="generate a two-line story instead of one prompt")
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]

    try:
        driver = make_driver()
    except WebDriverException as e:
        print(f"playground: FAIL could not start headless Chromium: {e.msg}", file=sys.stderr)
        return 1
    try:
        driver.set_script_timeout(60)
        load_page(driver, args.url)
        h264 = driver.execute_script(f"return document.createElement('video').canPlayType('{H264}')")
        print(f"playground: canPlayType H.264: {h264!r}")
        if args.format == "mp4" and not h264:
            print("playground: this Chromium cannot play H.264", file=sys.stderr)
            return 3
        driver.execute_script(WATCH_PREVIEWS_JS)
        fill_form(driver, args)
        started = time.monotonic()
        driver.find_element(By.ID, "generate").click()
        wait_done(driver, args.timeout)
        check_results(driver, args, stages)
        print(f"playground: checks passed {time.monotonic() - started:.1f} s after Generate"
              + (" (story mode)" if args.story else ""))
        print(f"playground: ok ({args.format})")
        return 0
    except (CheckFailed, WebDriverException) as e:
        msg = e.msg if isinstance(e, WebDriverException) else str(e)
        print(f"playground: FAIL {msg}", file=sys.stderr)
        log = browser_log(driver)
        if log:
            print("playground: browser console:", file=sys.stderr)
            for line in log[-40:]:
                print(f"  {line}", file=sys.stderr)
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
