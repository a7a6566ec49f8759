"""Drive the real ComfyUI front-end in headless Chromium for one template (run with the ComfyUI venv's python).

Loads the template from ComfyUI's template route into the graph editor, reports dialogs and unknown node types,
converts the graph to API format in the page (``app.graphToPrompt``), optionally presses Run
(``app.queuePrompt``), waits for the prompt to finish, reads what our widgets drew, and takes a screenshot.
Prints one JSON object on stdout. It needs aiohttp (the ComfyUI venv has it; the pack's test env need not), talks
to 127.0.0.1 only, and is a test helper: ``.comfyignore`` keeps ``tests/`` out of the published node.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import aiohttp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


WIDGET_FACTS = r"""
(() => {
  const nodes = app.graph?._nodes ?? app.graph?.nodes ?? [];
  return nodes.filter((n) => n.litKind).map((n) => {
    const el = n.litView?.element;
    return {
      id: String(n.id), type: n.type, kind: n.litKind, propertyKeys: Object.keys(n.properties ?? {}),
      barsImages: el ? el.querySelectorAll(".lit-bars-image").length : 0,
      barRows: el ? el.querySelectorAll(".lit-bar-row").length : 0,
      barLabels: el ? [...el.querySelectorAll(".lit-bar-label")].map((x) => x.textContent).slice(0, 50) : [],
      compareCount: el?.dataset?.count ?? null,
      savedPath: el?.dataset?.path ?? null,
      trainStep: el?.dataset?.step ?? null, trainDone: el?.dataset?.done ?? null,
      trainReport: el?.querySelector(".lit-train-report pre")?.textContent ?? null,
      trainPoints: (n.properties?.lit_train?.series ?? n.properties?.lit_train?.history ?? null) ? true : false,
      saved: JSON.stringify(n.properties ?? {}).length,
      widgetHeight: n.litView?.minHeight?.() ?? null,
    };
  });
})()
"""

GRAPH_FACTS = r"""
(() => {
  const LG = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
  const nodes = app.graph?._nodes ?? app.graph?.nodes ?? [];
  const dialogs = [...document.querySelectorAll(".p-dialog")].filter((d) => d.offsetParent !== null)
    .map((d) => d.innerText.slice(0, 2000));
  return {
    dialogs,
    extensions: (app.extensions ?? []).map((e) => e.name),
    nodes: nodes.map((n) => ({ id: String(n.id), type: n.type, title: n.title,
      registered: LG ? !!LG.registered_node_types?.[n.type] : !!n.constructor?.nodeData,
      hasErrors: !!n.has_errors, badges: (n.badges ?? []).length,
      size: n.size ? [n.size[0], n.size[1]] : null,
      widgets: (n.widgets ?? []).map((w) => ({ name: w.name, type: w.type,
                                                value: typeof w.value === "object" ? null : w.value })),
    })),
  };
})()
"""


async def drive(a: argparse.Namespace) -> dict:
    names = ("chromium", "chromium-browser", "google-chrome")
    chromium = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if not chromium:
        return {"fatal": "chromium not found (apt-get install -y chromium)"}
    port = _free_port()
    udd = tempfile.mkdtemp(prefix="lit-cdp-")
    w, h = a.size.split(",")
    proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync",
                             f"--user-data-dir={udd}", f"--window-size={w},{h}", "--remote-debugging-address=127.0.0.1",
                             f"--remote-debugging-port={port}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result: dict = {"console": [], "exceptions": []}
    try:
        ws_url = None
        for _ in range(150):
            try:
                tabs = _get(f"http://127.0.0.1:{port}/json/list", timeout=1)
                ws_url = next(t["webSocketDebuggerUrl"] for t in tabs if t.get("type") == "page")
                break
            except Exception:
                time.sleep(0.2)
        if not ws_url:
            return {"fatal": "could not reach chromium's devtools endpoint"}
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            ids = {"n": 0}
            pending: dict[int, asyncio.Future] = {}

            async def reader():
                async for m in ws:
                    d = json.loads(m.data)
                    if "id" in d and d["id"] in pending:
                        pending.pop(d["id"]).set_result(d)
                    elif d.get("method") == "Runtime.consoleAPICalled":
                        p = d["params"]
                        text = " ".join(str(x.get("value", x.get("description", ""))) for x in p["args"])
                        result["console"].append({"level": p.get("type"), "text": text[:1000]})
                    elif d.get("method") == "Runtime.exceptionThrown":
                        det = d["params"]["exceptionDetails"]
                        result["exceptions"].append((det.get("text", "") + " " +
                                                     str(det.get("exception", {}).get("description", "")))[:1000])
                    elif d.get("method") == "Log.entryAdded":
                        e = d["params"]["entry"]
                        if e.get("level") == "error":
                            result["console"].append({"level": "log-error",
                                                      "text": (e.get("text", "") + " " + e.get("url", ""))[:1000]})

            task = asyncio.create_task(reader())

            async def call(method, **params):
                ids["n"] += 1
                fut = asyncio.get_running_loop().create_future()
                pending[ids["n"]] = fut
                await ws.send_str(json.dumps({"id": ids["n"], "method": method, "params": params}))
                return await asyncio.wait_for(fut, 120)

            async def js(expr):
                r = await call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
                res = r.get("result", {})
                if "exceptionDetails" in res:
                    raise RuntimeError("page script failed: " + str(
                        res["exceptionDetails"].get("exception", {}).get("description", res["exceptionDetails"]))[:800])
                return res.get("result", {}).get("value")

            await call("Page.enable")
            await call("Runtime.enable")
            await call("Log.enable")
            await call("Page.navigate", url=a.url)
            t0 = time.time()
            while time.time() - t0 < 90:
                try:
                    if await js("!!(window.app && window.app.graph && window.app.canvas && "
                                "(app.extensions ?? []).length > 0)"):
                        break
                except RuntimeError:
                    pass
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)  # let extensions finish registering
            await js("document.querySelectorAll('.p-dialog-close-button').forEach((b) => b.click()); true")
            await asyncio.sleep(0.5)
            template_url = a.url.rstrip("/") + a.template
            result["load"] = await js(
                f"(async () => {{ const r = await fetch({json.dumps(template_url)});"
                f" if (!r.ok) return 'HTTP ' + r.status; await app.loadGraphData(await r.json());"
                " return 'loaded'; })()")
            await asyncio.sleep(2.0)
            result["graph"] = await js(GRAPH_FACTS)
            result["api"] = await js("(async () => (await app.graphToPrompt()).output)()")
            if a.queue:
                before = set(_get(a.url.rstrip("/") + "/history?max_items=10000") or {})
                result["queued"] = await js("(async () => { await app.queuePrompt(0, 1); return true; })()")
                prompt_id, entry, t1 = None, None, time.time()
                while time.time() - t1 < a.timeout:
                    await asyncio.sleep(1.0)
                    if prompt_id is None:
                        q = _get(a.url.rstrip("/") + "/queue")
                        running = [item[1] for item in q.get("queue_running", []) + q.get("queue_pending", [])]
                        fresh = [k for k in (_get(a.url.rstrip("/") + "/history?max_items=10000") or {})
                                 if k not in before]
                        prompt_id = (running or fresh or [None])[0]
                    if prompt_id is not None:
                        entry = (_get(a.url.rstrip("/") + f"/history/{prompt_id}") or {}).get(prompt_id)
                        if entry and entry.get("status", {}).get("completed") is not None and (
                                entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                            break
                result["prompt_id"] = prompt_id
                result["run_seconds"] = round(time.time() - t1, 1)
                result["finished"] = bool(entry and entry.get("status", {}).get("status_str") in ("success", "error"))
                await asyncio.sleep(2.0)  # executed events -> widgets redraw
                result["widgets"] = await js(WIDGET_FACTS)
                if a.reload:
                    # What a user sees after reopening the workflow: the saved node properties redraw the widgets.
                    saved = await js("JSON.stringify(app.graph.serialize())")
                    await js(f"(async () => {{ await app.loadGraphData(JSON.parse({json.dumps(saved)}));"
                             " return 1; })()")
                    await asyncio.sleep(1.5)
                    result["widgets_after_reload"] = await js(WIDGET_FACTS)
                    result["graph_after_reload"] = await js(GRAPH_FACTS)
            if a.screenshot:
                await js(f"(() => {{ try {{ app.canvas.ds.scale = {float(a.scale)}; app.canvas.ds.offset = [20, 20];"
                         " app.graph.setDirtyCanvas(true, true); } catch (e) {} return 1; })()")
                await asyncio.sleep(1.0)
                shot = await call("Page.captureScreenshot", format="png")
                os.makedirs(os.path.dirname(os.path.abspath(a.screenshot)), exist_ok=True)
                with open(a.screenshot, "wb") as fh:
                    fh.write(base64.b64decode(shot["result"]["data"]))
                result["screenshot"] = a.screenshot
            task.cancel()
    except Exception as exc:  # reported to the test, which fails with it
        result["fatal"] = f"{type(exc).__name__}: {exc}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(udd, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--template", required=True, help="server path, /api/workflow_templates/<pack>/<name>.json")
    ap.add_argument("--queue", action="store_true")
    ap.add_argument("--reload", action="store_true")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--screenshot")
    ap.add_argument("--scale", default="0.7")
    ap.add_argument("--size", default="1600,1000")
    a = ap.parse_args()
    json.dump(asyncio.run(drive(a)), sys.stdout)


if __name__ == "__main__":
    main()
