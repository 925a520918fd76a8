"""The baseline: a FastAPI endpoint that reads the body and answers, with nothing else behind it."""

from __future__ import annotations

from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/webhooks/whatsapp/{app_id}")
async def receive(app_id: str, request: Request) -> dict[str, str]:
    await request.body()
    return {"status": "accepted"}
