"""The product's URLs and the floor view behind them (bench/floor.py)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.urls import path

from bench.floor_site import vendor
from chatsite.urls import urlpatterns as product


def floor_view(request: HttpRequest) -> HttpResponseBase:
    """A sync view, as the product's message POST is: the whole middleware chain (session,
    CSRF, the signed-in user) runs in one request thread; then the vendor's stream goes back
    as the response, read on daphne's loop. No database write, no product rule."""
    if request.method != "POST":
        return HttpResponse(status=405)
    if not request.user.is_authenticated:
        return HttpResponse(status=403)
    return StreamingHttpResponse(vendor.stream(request.POST.get("text", ""), 1024),
                                 content_type="text/event-stream")


urlpatterns = [*product, path("bench-floor/", floor_view)]
