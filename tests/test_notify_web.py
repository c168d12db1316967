"""The notification pages: inline validation, redacted URLs, test messages, admins only."""
from __future__ import annotations

import re

from sqlalchemy import select

from server.reporting import notify
from server.core.models import NotificationChannel, NotificationDelivery
from tests.conftest import make_user
from tests.test_reports import login


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_channel_pages(app, session, admin_user):
    client = app.test_client()
    login(client, "admin")
    page = client.get("/notifications").get_data(as_text=True)
    assert "No channels yet" in page
    token = csrf(page)

    resp = client.post("/notifications", data={"csrf_token": token, "name": "ops", "url": "not a url",
                                               "events": ["execution.failed"], "enabled": "on"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422
    assert re.search(r'class="field-error" data-for="ch-url">[^<]*not a valid Apprise URL', html)
    assert 'value="ops"' in html  # what was typed is kept

    url = "json://alice:pa55word@127.0.0.1:9/hook"
    resp = client.post("/notifications", data={"csrf_token": token, "name": "ops", "url": url,
                                               "events": ["execution.failed", "schedule.missed"], "enabled": "on"})
    assert resp.status_code == 302
    html = client.get("/notifications").get_data(as_text=True)
    assert "json://127.0.0.1:9/…" in html and "pa55word" not in html and "alice" not in html
    channel = session.execute(select(NotificationChannel)).scalar_one()
    assert channel.events == ["execution.failed", "schedule.missed"]

    # edit without retyping the URL keeps it; the form never shows it
    edit = client.get(f"/notifications/{channel.id}").get_data(as_text=True)
    assert "pa55word" not in edit
    resp = client.post(f"/notifications/{channel.id}", data={"csrf_token": token, "name": "ops team",
                                                             "events": ["execution.succeeded"]})
    assert resp.status_code == 302
    session.expire_all()
    channel = session.get(NotificationChannel, channel.id)
    assert channel.name == "ops team" and channel.enabled is False and notify.channel_url(channel) == url
    resp = client.post(f"/notifications/{channel.id}", data={"csrf_token": token, "name": "ops team", "events": []})
    assert resp.status_code == 422 and "choose at least one event" in resp.get_data(as_text=True)

    assert client.post(f"/notifications/{channel.id}/test", data={"csrf_token": token}).status_code == 302
    assert session.execute(select(NotificationDelivery.event)).scalar_one() == "test"
    assert client.post(f"/notifications/{channel.id}/delete", data={"csrf_token": token}).status_code == 302
    assert session.execute(select(NotificationChannel)).first() is None


def test_channel_pages_are_for_admins(app, session):
    make_user(session, "olga", "operator")
    client = app.test_client()
    assert client.get("/notifications").status_code == 302  # to the login page
    login(client, "olga")
    assert client.get("/notifications").status_code == 403
    token = csrf(client.get("/executions").get_data(as_text=True))
    assert client.post("/notifications", data={"csrf_token": token, "name": "x", "url": "json://h/p"}).status_code == 403
