#!/usr/bin/env python3
"""A Breakpad/Crashpad-style crash server for the crash upload tests.

usage: crash_server.py OUT_DIR [STATUS,STATUS,...]

Listens on 127.0.0.1 (a free port, printed as the first line of stdout), answers the
n-th POST with the n-th status of the list (200 once the list is used up): 2xx with
`CrashID=bp-<n>`, others with a one-line reason. Each request is recorded in OUT_DIR as
req-<n>.json (status sent, whether the body was gzip, every text field) and each file part
as req-<n>-<name>.bin. The multipart body is parsed here by hand (no cgi, no email), as a
strict server would: a malformed body is answered 400 and recorded with "error".
"""
import gzip
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUT = sys.argv[1]
PLAN = [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 and sys.argv[2] else []
LOCK = threading.Lock()
COUNT = [0]


def parse_multipart(body, content_type):
    m = re.match(r'multipart/form-data;\s*boundary=("?)([^";]+)\1$', content_type)
    if not m:
        raise ValueError("not multipart/form-data: %r" % content_type)
    delimiter = b"--" + m.group(2).encode()
    if not body.startswith(delimiter):
        raise ValueError("body does not start with the boundary")
    fields, files = {}, {}
    rest = body[len(delimiter):]
    while True:
        if rest.startswith(b"--"):
            if rest not in (b"--", b"--\r\n"):
                raise ValueError("data after the closing boundary")
            return fields, files
        if not rest.startswith(b"\r\n"):
            raise ValueError("no CRLF after a boundary")
        end = rest.find(b"\r\n" + delimiter)
        if end < 0:
            raise ValueError("no closing boundary")
        part, rest = rest[2:end], rest[end + 2 + len(delimiter):]
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part without headers")
        headers = {}
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        disposition = headers.get("content-disposition", "")
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if not disposition.startswith("form-data") or not name:
            raise ValueError("bad Content-Disposition %r" % disposition)
        if filename:
            files[name.group(1)] = (filename.group(1), content)
        else:
            if name.group(1) in fields:
                raise ValueError("field %r twice" % name.group(1))
            fields[name.group(1)] = content.decode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with LOCK:
            COUNT[0] += 1
            n = COUNT[0]
        status = PLAN[n - 1] if n <= len(PLAN) else 200
        record = {"n": n, "path": self.path, "status": status,
                  "gzip": self.headers.get("Content-Encoding") == "gzip",
                  "content_length": length}
        try:
            if record["gzip"]:
                body = gzip.decompress(body)
            fields, files = parse_multipart(body, self.headers.get("Content-Type", ""))
            record["fields"] = fields
            record["files"] = {k: f for k, (f, _) in files.items()}
            for name, (_, content) in files.items():
                with open(os.path.join(OUT, "req-%d-%s.bin" % (n, name)), "wb") as f:
                    f.write(content)
        except Exception as e:  # recorded and answered 400, as a strict server would
            record["error"] = str(e)
            status = record["status"] = 400
        if 200 <= status < 300:
            answer = b"CrashID=bp-%d\n" % n
        else:
            answer = b"planned answer %d\n" % status
        tmp = os.path.join(OUT, "req-%d.tmp" % n)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(OUT, "req-%d.json" % n))
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
