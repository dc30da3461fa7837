"""Celery tasks of the documents room: extracting an uploaded document's text (once)."""

from __future__ import annotations

from celery import shared_task

from conversations.documents.store import extract


@shared_task(name="conversations.extract_document", ignore_result=True)
def extract_document(document_id: str) -> str:
    return extract(document_id)
