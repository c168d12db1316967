def test_token_exchange_and_health(app, admin_user):
    client = app.test_client()
    resp = client.post("/api/v1/auth/token", json={"username": "admin", "password": "admin-password-1"})
    assert resp.status_code == 201 and resp.json["token"].startswith("tm_")
    resp = client.post("/api/v1/auth/token", json={"username": "admin", "password": "wrong"})
    assert resp.status_code == 401 and resp.json["error"]["code"] == "unauthorized"
    assert client.get("/healthz").status_code == 200
