"""Web servers' access logs (nginx, Apache httpd: the Common and Combined Log Formats), `--log-format access`.

Why a reader of its own: an access line's message is its request and its status, and a format string
cannot make one message of two fields; the status alone would also be lost to Drain's number mask
(`500` becomes `<:NUM:>` like `200`), so a burst of server errors would read as ordinary traffic. The
message is `INTERNAL_SERVER_ERROR GET api users 42`: the status named in words keeps it in the template
(first, so Drain's parse tree never merges a 500 with a 200), the path's numbers are masked as usual.
The client, user, size, referrer and user agent vary per request and stay out of the message
(`--key-regex '^(\\S+)'` makes sessions per client).
"""

from __future__ import annotations

import re
from http import HTTPStatus

ACCESS_FORMAT = "access"

#: host ident user [time] "request" status size, then optionally "referrer" "user agent" (Combined)
_ACCESS_LINE = re.compile(
    r'(?P<host>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    r"(?P<status>\d{3}) (?P<size>\S+)"
)


def access_fields(line: str) -> dict[str, str] | None:
    """Header fields of one access-log line (`Content`, `Time`, `Level` from the status class), or None."""
    m = _ACCESS_LINE.match(line)
    if m is None:
        return None
    status = m.group("status")
    level = "ERROR" if status[0] == "5" else "WARN" if status[0] == "4" else "INFO"
    return {"Content": f"{_status_word(int(status))} {_request(m.group('request'))}", "Time": m.group("time"),
            "Level": level}


#: a status outside the standard's names, by its class (nginx's 499: the client closed the connection)
_STATUS_CLASS = {1: "INFORMATIONAL", 2: "SUCCESS", 3: "REDIRECT", 4: "CLIENT_ERROR", 5: "SERVER_ERROR"}


def _status_word(status: int) -> str:
    """`INTERNAL_SERVER_ERROR` for 500: letters only, because Drain treats a token with a digit as a variable
    (`status_500` and `status_200` fell into one template), and a name says what the number means."""
    try:
        return HTTPStatus(status).phrase.upper().replace(" ", "_").replace("-", "_").replace("'", "")
    except ValueError:
        return _STATUS_CLASS.get(status // 100, "UNKNOWN_STATUS")


def _request(request: str) -> str:
    """`GET api users 42` for `GET /api/users/42?page=2 HTTP/1.1`: the method and the path's segments as words.

    Why words: Drain's path mask would make every path one `<:PATH:>`, and the endpoint is what tells a
    scanner's `/wp-admin/setup.php` from the service's own routes; the query's values vary per request and
    the protocol says little. A request that is not `METHOD target protocol` (`-` for a connection closed
    before one, a TLS handshake sent to a plain-HTTP port) is kept as it came."""
    parts = request.replace('\\"', '"').split()
    if len(parts) != 3 or not parts[0].isalpha():
        return " ".join(parts) or "-"
    path = parts[1].partition("?")[0]
    return " ".join([parts[0], *(seg for seg in path.split("/") if seg)]) if path.strip("/") else f"{parts[0]} /"
