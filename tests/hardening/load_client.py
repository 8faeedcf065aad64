"""One load-test client PROCESS: reads ``{"url", "auth", "headers", "requests": [[path, body], ...]}`` as JSON on
stdin, sends the requests in order, and prints ``[[path, status, seconds], ...]`` as JSON.

A 503 from /predict (the server is busy) is retried after a short pause, at most ``BUSY_RETRIES`` times; every
refusal is reported as its own entry. Imports nothing of groundloop: a client knows only HTTP.
"""

import json
import sys
import time

import requests

BUSY_RETRIES = 100
BUSY_PAUSE_SECONDS = 0.2


def main() -> None:
    job = json.load(sys.stdin)
    session = requests.Session()
    session.auth = tuple(job["auth"])
    session.headers.update(job["headers"])
    answers = []
    for path, body in job["requests"]:
        for _ in range(BUSY_RETRIES):
            started = time.monotonic()
            try:
                status = session.post(job["url"] + path, json=body, timeout=120).status_code
            except requests.RequestException as exc:
                status = f"{type(exc).__name__}"
            answers.append([path, status, round(time.monotonic() - started, 3)])
            if status != 503:
                break
            time.sleep(BUSY_PAUSE_SECONDS)
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
