"""python range_server.py ROOT: serves ROOT's files with HTTP Range support on 127.0.0.1, as a
cloud bucket serves a COG to GDAL (the port is printed first); while ROOT/FAIL exists every
request gets HTTP 503, a server or network that went away. While ROOT/FLAKY exists (first line:
a number N), the first N distinct ranges read past a file's first byte (pixel data, not the
header) each get one 503 and are answered when asked again, a busy bucket; each such range is
appended to FLAKY. A process of its own: GDAL holds the GIL while it reads, so a server thread
in the reading process would never answer."""

import http.server
import os
import re
import sys
import threading

FLAKY_LOCK = threading.Lock()

class RangeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _path(self):
        return os.path.join(sys.argv[1], self.path.lstrip("/"))

    def _failing(self):
        if os.path.exists(os.path.join(sys.argv[1], "FAIL")):
            self.send_error(503)
            return True
        return False

    def _missing(self):
        if not os.path.isfile(self._path()):  # GDAL probes for .aux.xml, .msk, ... beside the file
            self.send_error(404)
            return True
        return False

    def do_HEAD(self):
        if self._failing() or self._missing():
            return
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(self._path())))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def _flaky(self):
        flaky = os.path.join(sys.argv[1], "FLAKY")
        wanted = self.headers.get("Range", "")
        if not re.match(r"bytes=[1-9]", wanted):
            return False
        with FLAKY_LOCK:
            if not os.path.exists(flaky):
                return False
            with open(flaky) as f:
                budget, *failed = f.read().split("\n")
            key = f"{self.path} {wanted}"
            failed = [line for line in failed if line]
            if len(failed) >= int(budget):
                return False
            with open(flaky, "a") as f:
                f.write("\n" + key)
        self.send_error(503)
        return True

    def do_GET(self):
        if self._failing() or self._missing() or self._flaky():
            return
        with open(self._path(), "rb") as f:
            data = f.read()
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            body = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
print(server.server_address[1], flush=True)
server.serve_forever()
