"""A fake MediaWiki Action API (``api.php``) on 127.0.0.1 that speaks the real JSON format.

It answers the three queries the ``wikipedia`` package makes: full-text search
(``list=search``), page info with URL (``prop=info|pageprops``) and plain-text extracts
(``prop=extracts|revisions``). Every request is recorded; ``stop()`` takes it off the network.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeMediaWiki:
    """``articles``: title -> plain text. ``url`` is the API endpoint to set as ``GENMS_WIKIPEDIA_API``."""

    def __init__(self, articles: dict[str, str], delay: float = 0.0):
        self.articles, self.delay = articles, delay
        self.page_ids = {title: str(1000 + i) for i, title in enumerate(articles)}
        self.requests: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                url = urlparse(self.path)
                params = {key: values[0] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
                fake.requests.append(params)
                time.sleep(fake.delay)
                body = fake.answer(params) if url.path == "/w/api.php" else None
                data = json.dumps(body if body is not None else {"error": {"code": "badpath", "info": url.path}}).encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("content-type", "application/json; charset=utf-8")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/w/api.php"
        self._running = False

    def page_url(self, title: str) -> str:
        return f"https://en.wikipedia.org/wiki/{title.replace(' ', '_')}"

    def answer(self, params: dict[str, str]) -> dict:
        if params.get("list") == "search":
            words = set(params["srsearch"].lower().split())
            def overlap(title):  # whole words shared by the query and the article
                return len(words & set(re.findall(r"\w+", (title + " " + self.articles[title]).lower())))
            hits = sorted((t for t in self.articles if overlap(t)), key=lambda t: -overlap(t))
            limit = int(params.get("srlimit", 10))
            return {"batchcomplete": "", "query": {"searchinfo": {"totalhits": len(hits)},
                                                    "search": [{"ns": 0, "title": t} for t in hits[:limit]]}}
        title = params.get("titles", "")
        if title not in self.articles:
            return {"batchcomplete": "", "query": {"pages": {"-1": {"ns": 0, "title": title, "missing": ""}}}}
        page_id = self.page_ids[title]
        page = {"pageid": int(page_id), "ns": 0, "title": title}
        if params.get("prop") == "info|pageprops":
            page |= {"contentmodel": "wikitext", "pagelanguage": "en", "fullurl": self.page_url(title),
                     "canonicalurl": self.page_url(title), "lastrevid": 42}
        elif params.get("prop") == "extracts|revisions":
            page |= {"extract": self.articles[title], "revisions": [{"revid": 42, "parentid": 41}]}
        return {"batchcomplete": "", "query": {"pages": {page_id: page}}}

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self.server.shutdown()
            self.server.server_close()
            self._running = False

    def __exit__(self, *exc):
        self.stop()
