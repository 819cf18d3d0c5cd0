"""Completion webhooks against the real service and a real HTTP receiver on 127.0.0.1 (allowed through
WEBHOOK_ALLOW_HOSTS; no traffic leaves this machine): the body is GET /result's JSON, signed with
WEBHOOK_SECRET; retries back off until a 2xx, a 410 stops them, attempts are capped and recorded; private and
metadata targets are refused at submit."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from scripts.redis_server import free_port
from scripts.service_process import ServiceProcess
from scripts.supervise import wait_until
from tests.user_models import colour_classifier, coloured_images, write_model

SECRET = "webhook-test-secret"
IMAGES = coloured_images(3, seed=21)


class Receiver:
    """Answers each path with its scripted statuses in turn (the last one repeated), recording every POST."""

    def __init__(self) -> None:
        self.port = free_port()
        self.script: dict[str, list[int]] = {"/ok": [200], "/flaky": [500, 503, 204], "/gone": [410], "/down": [500]}
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path.split("?")[0]
                seen = sum(r["path"] == path for r in receiver.received)
                statuses = receiver.script[path]
                receiver.received.append({"path": path, "headers": dict(self.headers), "body": body})
                self.send_response(statuses[min(seen, len(statuses) - 1)])
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def to(self, path: str) -> list[dict]:
        return [r for r in self.received if r["path"] == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()


@pytest.fixture(scope="module")
def svc(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    repo = tmp_path_factory.mktemp("webhook_repository")
    write_model(repo, "plants", 1, lambda d: colour_classifier(1).save(d / "model.keras"))
    service = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/12", "MODEL_REPOSITORY": str(repo), "MODELS": "plants",
        "API_WORKERS": "1", "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "WEBHOOK_BACKOFF_S": "0.2", "WEBHOOK_MAX_ATTEMPTS": "3",
        "UPLOAD_DIR": str(tmp_path_factory.mktemp("webhook-uploads")),
    }, log_path=tmp_path_factory.mktemp("logs") / "webhooks.log").start()
    yield service
    assert service.stop() == 0, service.log_tail()


def submit(svc: ServiceProcess, callback: str) -> dict:
    files = [("images", (f"{i}.png", data)) for i, data in enumerate(IMAGES)]
    response = httpx.post(svc.url + "/jobs", data={"callback_url": callback}, files=files, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()


def result(svc: ServiceProcess, job: dict) -> dict:
    return httpx.get(svc.url + job["result_url"], timeout=10).json()


def test_a_finished_job_is_posted_signed_with_the_body_get_result_gives(svc, receiver):
    job = submit(svc, receiver.url("/ok"))
    assert wait_until(lambda: receiver.to("/ok"), 60), svc.log_tail()
    (delivery,) = receiver.to("/ok")
    headers = {k.lower(): v for k, v in delivery["headers"].items()}
    expected = "sha256=" + hmac.new(SECRET.encode(), delivery["body"], hashlib.sha256).hexdigest()
    assert headers["x-imageclf-signature"] == expected and headers["x-imageclf-event"] == "job.success"
    assert headers["x-imageclf-delivery"] and headers["content-type"] == "application/json"
    now = result(svc, job)
    assert {k: v for k, v in json.loads(delivery["body"]).items() if k != "webhook"} == \
        {k: v for k, v in now.items() if k != "webhook"}
    assert now["status"] == "SUCCESS" and now["result"]["succeeded"] == len(IMAGES)
    assert wait_until(lambda: (result(svc, job).get("webhook") or {}).get("last_status") == 200, 10)
    record = result(svc, job)["webhook"]
    assert record["attempts"] == 1 and record["delivered_at"] <= time.time()


def test_failed_attempts_back_off_until_a_2xx_and_a_410_stops_them(svc, receiver):
    flaky, gone, down = (submit(svc, receiver.url(path)) for path in ("/flaky", "/gone", "/down"))
    assert wait_until(lambda: len(receiver.to("/flaky")) == 3 and len(receiver.to("/down")) == 3, 60)
    time.sleep(1.5)  # time for attempts that must not come
    assert len(receiver.to("/flaky")) == 3 and len(receiver.to("/down")) == 3 and len(receiver.to("/gone")) == 1
    assert len({r["headers"]["X-Imageclf-Delivery"] for r in receiver.to("/flaky")}) == 1  # one event, retried
    assert result(svc, flaky)["webhook"] == {"attempts": 3, "last_status": 204,
                                             "delivered_at": result(svc, flaky)["webhook"]["delivered_at"]}
    assert result(svc, gone)["webhook"]["last_status"] == 410 and result(svc, gone)["webhook"]["attempts"] == 1
    assert result(svc, down)["webhook"]["attempts"] == 3 and result(svc, down)["webhook"]["delivered_at"] is None


def test_a_cancelled_job_and_a_request_that_answered_202_are_announced(svc, receiver):
    receiver.script["/cancelled"] = receiver.script["/late"] = [200]
    many = [("images", (f"{i}.png", IMAGES[i % 3])) for i in range(300)]
    job = httpx.post(svc.url + "/jobs", data={"callback_url": receiver.url("/cancelled")}, files=many, timeout=60)
    assert job.status_code == 202 and httpx.delete(f"{svc.url}/jobs/{job.json()['id']}", timeout=30).status_code == 200
    assert wait_until(lambda: receiver.to("/cancelled"), 30)
    assert receiver.to("/cancelled")[0]["headers"]["X-Imageclf-Event"] == "job.revoked"

    late = httpx.post(svc.url + "/predict", params={"timeout": "0", "callback_url": receiver.url("/late")},
                      files={"image": ("a.png", IMAGES[0])}, timeout=30)
    assert late.status_code in (200, 202), late.text
    if late.status_code == 202:  # answered within no time at all is possible, and then nothing is posted
        assert wait_until(lambda: receiver.to("/late"), 30)
        posted = json.loads(receiver.to("/late")[0]["body"])
        assert posted["id"] == late.json()["id"] and posted["status"] == "SUCCESS"
        assert receiver.to("/late")[0]["headers"]["X-Imageclf-Event"] == "request.success"


@pytest.mark.parametrize("url,message", [
    ("http://localhost:9/hook", "resolves to a loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[::ffff:192.168.0.1]/hook", "192.168.0.1"),
    ("ftp://127.0.0.1/hook", "http:// or https://"),
    ("http://user:secret@127.0.0.1/hook", "user name or password"),
    ("http://" + "a" * 3000 + ".example/", "longer than"),
], ids=["localhost", "private", "metadata", "mapped", "scheme", "credentials", "long"])
def test_private_and_metadata_targets_are_refused_at_submit(svc, url, message):
    response = httpx.post(svc.url + "/jobs", data={"callback_url": url}, files={"images": ("a.png", IMAGES[0])},
                          timeout=30)
    assert response.status_code == 400 and message in response.json()["error"], response.text
