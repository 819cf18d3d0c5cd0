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
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from imageclf.launch.redis_server import free_port
from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import wait_until
from tests.user_models import colour_classifier, coloured_images, write_model

SECRET = "webhook-test-secret"
TIMEOUT_S, HANG_S = 1.0, 4.0
IMAGES = coloured_images(3, seed=21)


class Receiver:
    """Answers each path with its scripted statuses in turn (the last one repeated), recording every POST."""

    def __init__(self) -> None:
        self.port = free_port()
        self.script: dict[str, list[int]] = {"/ok": [200], "/flaky": [500, 503, 204], "/gone": [410], "/down": [500],
                                             "/hang": [200], "/kill": [200]}
        self.on_kill: Callable[[], None] = lambda: None
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path.split("?")[0]
                seen = sum(r["path"] == path for r in receiver.received)
                statuses = receiver.script[path]
                receiver.received.append({"path": path, "headers": dict(self.headers), "body": body})
                if path == "/hang":  # past WEBHOOK_TIMEOUT_S before answering
                    time.sleep(HANG_S)
                if path == "/kill" and seen == 0:  # the attempt's process dies while it waits for this answer
                    receiver.on_kill()
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
        "WEBHOOK_BACKOFF_S": "0.2", "WEBHOOK_MAX_ATTEMPTS": "3", "WEBHOOK_TIMEOUT_S": str(TIMEOUT_S),
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


def test_a_receiver_that_hangs_is_timed_out_and_retried_while_other_deliveries_go_on(svc, receiver):
    hanging = submit(svc, receiver.url("/hang"))
    assert wait_until(lambda: receiver.to("/hang"), 60)
    started = time.monotonic()
    other = submit(svc, receiver.url("/ok"))  # not stuck behind the hanging attempt
    assert wait_until(lambda: (result(svc, other).get("webhook") or {}).get("last_status") == 200, 30)
    assert wait_until(lambda: (result(svc, hanging).get("webhook") or {}).get("attempts", 0) >= 1, 30)
    record = result(svc, hanging)["webhook"]
    assert record["last_status"] is None and "Timeout" in record["error"] and record["delivered_at"] is None
    assert wait_until(lambda: len(receiver.to("/hang")) == 3, 60)  # retried up to WEBHOOK_MAX_ATTEMPTS
    assert wait_until(lambda: result(svc, hanging)["webhook"]["attempts"] == 3, 30)
    assert time.monotonic() - started < 3 * HANG_S + 30


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


def decoder_pool(svc: ServiceProcess) -> list:
    """The decoders' pool processes (whose parent is a decoder too)."""
    import psutil

    def decoder(process: psutil.Process) -> bool:
        return "jobs,webhooks" in " ".join(process.cmdline())

    return [p for p in psutil.Process(svc.proc.pid).children(recursive=True) if decoder(p) and decoder(p.parent())]


def test_an_attempt_whose_worker_is_killed_mid_delivery_is_made_again(svc, receiver):
    import signal

    killed: list[int] = []

    def kill() -> None:
        for process in decoder_pool(svc):
            process.send_signal(signal.SIGKILL)
            killed.append(process.pid)

    receiver.on_kill = kill
    job = submit(svc, receiver.url("/kill"))
    assert wait_until(lambda: len(receiver.to("/kill")) >= 2, 60), svc.log_tail()
    assert killed, "no decoder process was found to kill"
    first, again = receiver.to("/kill")[:2]
    assert first["headers"]["X-Imageclf-Delivery"] == again["headers"]["X-Imageclf-Delivery"]
    assert first["body"] == again["body"]
    assert wait_until(lambda: (result(svc, job).get("webhook") or {}).get("last_status") == 200, 30)
    assert result(svc, job)["webhook"]["attempts"] == 1  # the killed attempt never finished; the same one was made
    assert wait_until(lambda: len(decoder_pool(svc)) >= 2, 30)  # Celery started new pool processes


def test_an_attempt_claimed_by_a_scheduler_that_died_is_sent_again_after_the_claim(redis_url):
    import redis

    from imageclf.workers.jobs.webhooks import CLAIM_S, DUE_KEY, schedule, send_due

    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/14")
    client.delete(DUE_KEY)
    schedule(client, "job-1", "job", "http://127.0.0.1:9/hook")
    now = time.time()

    def dies(entry: dict) -> None:
        raise RuntimeError("the process died before the task was queued")

    with pytest.raises(RuntimeError):
        send_due(client, dies, now=now)
    ((_, score),) = client.zrange(DUE_KEY, 0, -1, withscores=True)
    assert abs(score - (now + CLAIM_S)) < 1e-3  # still there, claimed
    sent: list[dict] = []
    assert send_due(client, sent.append, now=now + 1) == 0 and sent == []  # no other scheduler takes it meanwhile
    assert send_due(client, sent.append, now=now + CLAIM_S + 1) == 1 and sent[0]["id"] == "job-1"
    assert client.zcard(DUE_KEY) == 0  # removed once sent
    client.flushdb()


@pytest.mark.parametrize("url,message", [
    ("http://localhost:9/hook", "resolves to a loopback"),
    ("http://127.0.0.2:9/hook", "127.0.0.2"),  # loopback, but not the 127.0.0.1 WEBHOOK_ALLOW_HOSTS names
    ("http://10.1.2.3/hook", "private"),  # refused at submit, never connected to
    ("http://169.254.169.254/latest/meta-data", "link-local"),  # refused at submit, never connected to
    ("http://[::ffff:192.168.0.1]/hook", "192.168.0.1"),
    ("ftp://127.0.0.1/hook", "http:// or https://"),
    ("http://user:secret@127.0.0.1/hook", "user name or password"),
    ("http://" + "a" * 3000 + ".example/", "longer than"),
], ids=["localhost", "loopback-not-allowed", "private", "metadata", "mapped", "scheme", "credentials", "long"])
def test_private_and_metadata_targets_are_refused_at_submit(svc, url, message):
    response = httpx.post(svc.url + "/jobs", data={"callback_url": url}, files={"images": ("a.png", IMAGES[0])},
                          timeout=30)
    assert response.status_code == 400 and message in response.json()["error"], response.text


@pytest.mark.parametrize("host,address", [
    ("169.254.169.254", "169.254.169.254"), ("10.0.0.1", "10.0.0.1"), ("[::1]", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"), ("[::ffff:169.254.169.254]", "::ffff:169.254.169.254"),
    ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0", "0.0.0.0"), ("127.0.0.2", "127.0.0.2"),
    ("[fd00::1]", "fd00::1"), ("224.0.0.1", "224.0.0.1"), ("100.64.0.1", "100.64.0.1"),
], ids=["metadata", "private", "v6-loopback", "mapped-loopback", "mapped-metadata", "decimal", "hex",
        "unspecified", "loopback", "v6-unique-local", "multicast", "shared-cgnat"])
def test_the_address_check_on_literal_addresses(monkeypatch, host, address):
    """check_target alone, with DNS and connections made impossible: only literal addresses are parsed."""
    import socket

    from imageclf.workers.jobs import webhook_targets

    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda h, *a, **k: real(h, *a, flags=socket.AI_NUMERICHOST))
    monkeypatch.setattr(socket.socket, "connect", lambda *_: pytest.fail("a connection was attempted"))
    monkeypatch.setattr(webhook_targets.settings, "WEBHOOK_ALLOW_HOSTS", frozenset({"127.0.0.1"}))
    with pytest.raises(webhook_targets.TargetRefused, match="resolves to a loopback, private") as refused:
        webhook_targets.check_target(f"http://{host}/hook")
    assert address in str(refused.value)
    assert webhook_targets.check_target("http://127.0.0.1:8080/hook")  # the allowed one
    assert webhook_targets.check_target("https://93.184.215.14/hook")  # a public address (no request is made)
