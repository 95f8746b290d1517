"""A fault-injecting FHIR server on 127.0.0.1 for tests and the reliability
run. The first path segment picks the behaviour:

    /ok/fhir/...        serves the resources it was given: a search by type, filtered by
                        code= (system|code tokens), paged by _count/_offset with total and
                        link.next; a read (Type/id) by id, 404 when there is none
    /slow/fhir/...      sleeps SLOW_SECONDS, then answers like /ok
    /e500|e401|e403|e404/fhir/...   that status with an OperationOutcome
    /badjson/fhir/...   200 with a body that is not JSON
    /truncated/fhir/... 200 announcing more bytes than it sends, then closes
    /endless/fhir/...   a searchset whose next link always points to a new page
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SLOW_SECONDS = 3.0
TYPE_OF_PATH = {"Patient", "Condition", "Observation", "MedicationRequest", "MedicationAdministration", "Procedure",
                "ServiceRequest", "AllergyIntolerance", "Medication"}
EMPTY = b'{"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}'


def _codes(resource: dict) -> set[str]:
    """"system|code" and "code" of each coding of a resource's code."""
    out = set()
    for coding in (resource.get("code") or {}).get("coding") or []:
        out.update((f"{coding.get('system')}|{coding.get('code')}", str(coding.get("code"))))
    return out


class FaultFHIR:
    def __init__(self, resources: dict[str, Any], slow_seconds: float = SLOW_SECONDS):
        # type -> resource (served to reads) or searchset Bundle (its entries searched and read by id)
        self.resources = resources
        self._bodies: dict[str, bytes] = {}  # path and query -> answer (the data never changes)
        self.slow_seconds = slow_seconds
        self.calls = 0
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):  # noqa: N802
                outer.calls += 1
                outer.paths.append(self.path)
                mode, _, rest = self.path.lstrip("/").partition("/")
                parts = rest.split("?")[0].split("/")
                rtype = next((p for p in parts if p in TYPE_OF_PATH), "")
                served = mode  # where next pages point
                if mode == "slow":
                    time.sleep(outer.slow_seconds)
                    mode = "ok"
                if mode.startswith("e") and mode[1:].isdigit():
                    return self._send(int(mode[1:]), {"resourceType": "OperationOutcome", "issue": []})
                if mode == "badjson":
                    return self._raw(200, b"<html>not json</html>")
                if mode == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(b'{"resourceType": "Bundle", "entry": [')
                    self.close_connection = True
                    return None
                if mode == "endless":
                    page = int(self.path.rsplit("page=", 1)[1]) if "page=" in self.path else 0
                    return self._send(200, {"resourceType": "Bundle", "type": "searchset", "entry": [],
                                            "link": [{"relation": "next",
                                                      "url": f"{outer.base('endless')}/{rtype}?page={page + 1}"}]})
                answer = outer.answer(rtype, parts, self.path, served)
                if answer is None:
                    return self._send(404, {"resourceType": "OperationOutcome", "issue": []})
                return self._raw(200, answer)

            def _send(self, status: int, body: dict):
                return self._raw(status, json.dumps(body).encode())

            def _raw(self, status: int, payload: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, rtype: str, parts: list[str], path: str, mode: str = "ok") -> bytes | None:
        """The body for a read or search on /ok or /slow (None: 404), cached by path."""
        body = self._bodies.get(path)
        if body is None:
            body = self._bodies[path] = self._answer(rtype, parts, path, mode)
        return body or None

    def _answer(self, rtype: str, parts: list[str], path: str, mode: str) -> bytes:
        data = self.resources.get(rtype)
        tail = parts[parts.index(rtype) + 1:] if rtype in parts else []
        entries = data.get("entry", []) if isinstance(data, dict) and data.get("resourceType") == "Bundle" else \
            [{"resource": data}] if data else []
        if tail and tail[0]:  # a read: Type/id
            found = next((e["resource"] for e in entries if e["resource"].get("id") == tail[0]), None)
            return json.dumps(found).encode() if found else b""
        query = parse_qs(urlsplit(path).query)
        if "code" in query:
            wanted = {t for v in query["code"] for t in v.split(",")}
            entries = [e for e in entries if _codes(e["resource"]) & wanted]
        if "_count" not in query:
            return json.dumps({"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                               "entry": entries}).encode() if entries else EMPTY
        count, offset = int(query["_count"][0]), int(query.get("_offset", ["0"])[0])
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                  "entry": entries[offset:offset + count]}
        if offset + count < len(entries):
            rest = "&".join(f"{k}={v}" for k, values in query.items() if k != "_offset" for v in values)
            bundle["link"] = [{"relation": "next", "url": f"{self.base(mode)}/{rtype}?{rest}&_offset={offset + count}"}]
        return json.dumps(bundle).encode()

    def base(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{mode}/fhir"

    def __enter__(self) -> "FaultFHIR":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_in_process(resources: dict[str, Any], slow_seconds: float, base_out) -> None:
    """Target for a separate process (its work then does not share the caller's GIL)."""
    server = FaultFHIR(resources, slow_seconds)
    base_out.put(server.base("slow"))
    server.server.serve_forever()


def resources_from_prefetch(prefetch: dict) -> dict[str, Any]:
    out = {"Patient": prefetch["patient"]}
    for value in prefetch.values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle" and value.get("entry"):
            out[value["entry"][0]["resource"]["resourceType"]] = value
    return out
