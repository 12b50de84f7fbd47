"""A script that must run before gradio's own: put at the top of the page's <head> by an ASGI middleware.

gradio 6.31's status tracker counts a pending event's elapsed seconds in a requestAnimationFrame loop that
stops only when the event's status changes; a tracker that goes away while pending keeps its loop for as long
as the tab is open, even on an empty gr.Blocks: ~5% of a core in headless chromium with nothing on the page.
The script asks for the status tracker's frames once a second instead (the elapsed-time text it draws still
moves every second), and only while a tracker is on screen: the loop of a hidden or removed tracker ends (during a
run followed by the Train tab, 28 such callbacks a second before, 5.5 after). Every other caller gets real
animation frames. gradio's `head=` runs too late for this:
the tracker module has taken its reference to requestAnimationFrame by then. bench/idle.py measures the idle page.
"""
from __future__ import annotations

SCRIPT = b"""<script>
(() => {
  const raf = window.requestAnimationFrame.bind(window), caf = window.cancelAnimationFrame.bind(window);
  const slowed = new Set(), SHOWN = ".wrap.full:not(.hide), .wrap.minimal:not(.hide)";  // a status tracker on screen
  window.requestAnimationFrame = (cb) => {
    if (!(new Error().stack || "").includes("statustracker")) return raf(cb);
    const id = setTimeout(() => { slowed.delete(id); if (document.querySelector(SHOWN)) cb(performance.now()); }, 1000);
    slowed.add(id);
    return id;
  };
  window.cancelAnimationFrame = (id) => slowed.delete(id) ? clearTimeout(id) : caf(id);
})();
</script>"""


class EarlyScript:
    """ASGI middleware: an HTML page answered to a GET gets SCRIPT right after its `<head>`."""

    def __init__(self, app, script: bytes = SCRIPT):
        self.app, self.script = app, script

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET":
            return await self.app(scope, receive, send)
        start, body = None, []

        async def send_html(message):
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in headers:
                    start = message  # held back until the whole page is here
                    return
                return await send(message)
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body).replace(b"<head>", b"<head>" + self.script, 1)
            headers = [(k, v) for k, v in start.get("headers") or [] if k != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, send_html)
